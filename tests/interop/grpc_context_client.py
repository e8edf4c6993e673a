"""Calls lifeline.example.Context/Get with Python's grpcio: a gRPC client nobody here wrote.

No generated code and no protobuf package: the request is the empty message (no bytes), and the
reply's one field (`string json = 1`) is read off the wire by hand.

usage: grpc_context_client.py HOST:PORT METHOD [--timeout SECONDS] [--metadata KEY=VALUE ...]

Prints one JSON line: {"code": "OK", "reply": {...}} or {"code": "DEADLINE_EXCEEDED",
"details": "..."}; the code is grpcio's name for the status it read.
"""

import argparse
import json
import sys

import grpc


def read_varint(data, i):
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def decode_context_reply(data):
    """ContextReply { string json = 1; } from protobuf's wire format."""
    i, text = 0, ""
    while i < len(data):
        key, i = read_varint(data, i)
        field, wire_type = key >> 3, key & 7
        if wire_type == 2:
            length, i = read_varint(data, i)
            if field == 1:
                text = data[i : i + length].decode("utf-8")
            i += length
        elif wire_type == 0:
            _, i = read_varint(data, i)
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
    return text


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("method", help="e.g. /lifeline.example.Context/Get")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--metadata", action="append", default=[])
    args = parser.parse_args()
    metadata = [tuple(pair.split("=", 1)) for pair in args.metadata]
    with grpc.insecure_channel(args.target) as channel:
        call = channel.unary_unary(
            args.method,
            request_serializer=lambda _: b"",
            response_deserializer=decode_context_reply,
        )
        try:
            reply = call(None, timeout=args.timeout, metadata=metadata)
            print(json.dumps({"code": "OK", "reply": json.loads(reply)}))
        except grpc.RpcError as error:
            print(json.dumps({"code": error.code().name, "details": error.details()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
