use std::fmt;
use std::time::Duration;

/// The settings of a [`CircuitBreakerLayer`](super::CircuitBreakerLayer), validated.
///
/// Made by [`CircuitBreakerSettings::builder`]; the builder's `build` refuses values that would
/// make the breaker meaningless or overflow its arithmetic, so a `CircuitBreakerSettings` is
/// always usable. The defaults are Polly v8's (failure ratio 0.1, minimum throughput 100,
/// sampling 30 s, break 5 s) with aio-request's 10 windows.
///
/// ```
/// use std::time::Duration;
/// use tower_lifeline::circuit_breaker::CircuitBreakerSettings;
///
/// let settings = CircuitBreakerSettings::builder()
///     .failure_threshold(0.5)
///     .minimum_throughput(10)
///     .sampling_duration(Duration::from_secs(10))
///     .break_duration(Duration::from_secs(5))
///     .consecutive_failures(5)
///     .build()
///     .unwrap();
/// assert_eq!(settings.minimum_throughput(), 10);
///
/// let err = CircuitBreakerSettings::builder().failure_threshold(1.5).build().unwrap_err();
/// assert_eq!(err.setting(), "failure_threshold");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakerSettings {
    pub(super) failure_threshold: f64,
    pub(super) minimum_throughput: u32,
    pub(super) sampling_duration: Duration,
    pub(super) windows_count: u32,
    pub(super) break_duration: Duration,
    pub(super) consecutive_failures: Option<u32>,
    pub(super) max_scopes: usize,
    pub(super) idle_timeout: Duration,
}

/// Polly v8 caps both the sampling and the break duration at one day.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest bucket: below a millisecond the window would mostly measure clock noise.
const MIN_BUCKET: Duration = Duration::from_millis(1);
/// The most buckets per window; each is 8 bytes per scope.
pub(super) const MAX_WINDOWS: u32 = 1000;

impl CircuitBreakerSettings {
    /// aio-request's `DefaultCircuitBreaker` arguments, the others at their defaults; the same
    /// checks as [`CircuitBreakerSettingsBuilder::build`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_lifeline::circuit_breaker::CircuitBreakerSettings;
    ///
    /// let settings = CircuitBreakerSettings::new(0.5, 10, Duration::from_secs(30), Duration::from_secs(5));
    /// assert!(settings.is_ok());
    /// assert!(CircuitBreakerSettings::new(0.5, 0, Duration::from_secs(30), Duration::from_secs(5)).is_err());
    /// ```
    pub fn new(
        failure_threshold: f64,
        minimum_throughput: u32,
        sampling_duration: Duration,
        break_duration: Duration,
    ) -> Result<Self, InvalidSettings> {
        Self::builder()
            .failure_threshold(failure_threshold)
            .minimum_throughput(minimum_throughput)
            .sampling_duration(sampling_duration)
            .break_duration(break_duration)
            .build()
    }

    /// A builder starting from the defaults.
    pub fn builder() -> CircuitBreakerSettingsBuilder {
        CircuitBreakerSettingsBuilder {
            settings: CircuitBreakerSettings::DEFAULT,
        }
    }

    const DEFAULT: CircuitBreakerSettings = CircuitBreakerSettings {
        failure_threshold: 0.1,
        minimum_throughput: 100,
        sampling_duration: Duration::from_secs(30),
        windows_count: 10,
        break_duration: Duration::from_secs(5),
        consecutive_failures: None,
        max_scopes: 1024,
        idle_timeout: Duration::from_secs(300),
    };

    /// Failures over requests at or above which the breaker opens.
    pub fn failure_threshold(&self) -> f64 {
        self.failure_threshold
    }

    /// Requests needed in the window before the failure ratio counts.
    pub fn minimum_throughput(&self) -> u32 {
        self.minimum_throughput
    }

    /// The length of the rolling window.
    pub fn sampling_duration(&self) -> Duration {
        self.sampling_duration
    }

    /// How many buckets the window is split into.
    pub fn windows_count(&self) -> u32 {
        self.windows_count
    }

    /// How long the breaker stays open before a probe may go.
    pub fn break_duration(&self) -> Duration {
        self.break_duration
    }

    /// Consecutive failures that open the breaker whatever the ratio, if enabled.
    pub fn consecutive_failures(&self) -> Option<u32> {
        self.consecutive_failures
    }

    /// The most scopes remembered at once.
    pub fn max_scopes(&self) -> usize {
        self.max_scopes
    }

    /// How long a scope may go without requests before it may be forgotten.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}

impl Default for CircuitBreakerSettings {
    fn default() -> Self {
        CircuitBreakerSettings::DEFAULT
    }
}

/// Builds [`CircuitBreakerSettings`]; see there for the defaults.
#[derive(Debug, Clone)]
pub struct CircuitBreakerSettingsBuilder {
    settings: CircuitBreakerSettings,
}

impl CircuitBreakerSettingsBuilder {
    /// Failures over requests at or above which the breaker opens; above 0 and below 1
    /// (default 0.1).
    pub fn failure_threshold(mut self, ratio: f64) -> Self {
        self.settings.failure_threshold = ratio;
        self
    }

    /// Requests needed in the window before the ratio counts; at least 1 (default 100).
    pub fn minimum_throughput(mut self, requests: u32) -> Self {
        self.settings.minimum_throughput = requests;
        self
    }

    /// The length of the rolling window; at most a day, and at least 1 ms per bucket
    /// (default 30 s).
    pub fn sampling_duration(mut self, duration: Duration) -> Self {
        self.settings.sampling_duration = duration;
        self
    }

    /// How many buckets the window is split into; 1 to 1000 (default 10). Old outcomes leave
    /// the window one bucket at a time.
    pub fn windows_count(mut self, count: u32) -> Self {
        self.settings.windows_count = count;
        self
    }

    /// How long the breaker stays open before one probe may go; 1 ms to a day (default 5 s).
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.settings.break_duration = duration;
        self
    }

    /// Also open after this many failures in a row, whatever the ratio and the throughput, as
    /// Finagle and Envoy do (they use 5); at least 1. Off by default, as in Polly.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.settings.consecutive_failures = Some(failures);
        self
    }

    /// The most scopes remembered at once; at least 1 (default 1024). When the table is full a
    /// new scope takes the place of idle ones, else of the least recently used.
    pub fn max_scopes(mut self, scopes: usize) -> Self {
        self.settings.max_scopes = scopes;
        self
    }

    /// How long a scope may go without requests before it is forgotten; above zero
    /// (default 5 minutes).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.settings.idle_timeout = timeout;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<CircuitBreakerSettings, InvalidSettings> {
        let s = self.settings;
        // Written so that NaN fails too: every comparison with NaN is false.
        if !(s.failure_threshold > 0.0 && s.failure_threshold < 1.0) {
            return Err(InvalidSettings::new(
                "failure_threshold",
                format!("must be above 0 and below 1, got {}", s.failure_threshold),
            ));
        }
        if s.minimum_throughput == 0 {
            return Err(InvalidSettings::new(
                "minimum_throughput",
                "must be at least 1".into(),
            ));
        }
        if s.windows_count == 0 || s.windows_count > MAX_WINDOWS {
            return Err(InvalidSettings::new(
                "windows_count",
                format!("must be 1 to {MAX_WINDOWS}, got {}", s.windows_count),
            ));
        }
        if s.sampling_duration > MAX_DURATION || s.sampling_duration / s.windows_count < MIN_BUCKET
        {
            return Err(InvalidSettings::new(
                "sampling_duration",
                format!(
                    "must be at most a day and at least 1 ms per window, got {:?} over {} windows",
                    s.sampling_duration, s.windows_count
                ),
            ));
        }
        if s.break_duration < MIN_BUCKET || s.break_duration > MAX_DURATION {
            return Err(InvalidSettings::new(
                "break_duration",
                format!("must be 1 ms to a day, got {:?}", s.break_duration),
            ));
        }
        if s.consecutive_failures == Some(0) {
            return Err(InvalidSettings::new(
                "consecutive_failures",
                "must be at least 1".into(),
            ));
        }
        if s.max_scopes == 0 {
            return Err(InvalidSettings::new(
                "max_scopes",
                "must be at least 1".into(),
            ));
        }
        if s.idle_timeout.is_zero() {
            return Err(InvalidSettings::new(
                "idle_timeout",
                "must be above zero".into(),
            ));
        }
        Ok(s)
    }
}

/// A circuit breaker setting out of range; names the setting and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSettings {
    setting: &'static str,
    problem: String,
}

impl InvalidSettings {
    fn new(setting: &'static str, problem: String) -> Self {
        InvalidSettings { setting, problem }
    }

    /// The name of the offending setting, as the builder method is called.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for InvalidSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid circuit breaker setting `{}`: {}",
            self.setting, self.problem
        )
    }
}

impl std::error::Error for InvalidSettings {}
