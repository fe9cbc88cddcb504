"""Seed the fuzz corpus from tests/vectors/ (every datagram, positive and negative), in each fuzz mode."""

import binascii
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def seeds():
    for path in sorted(glob.glob(os.path.join(HERE, "..", "vectors", "*.json"))):
        with open(path) as handle:
            vector = json.load(handle)
        datagrams = [binascii.unhexlify(text) for text in vector.get("datagrams", [])]
        for datagram in datagrams:
            yield bytes([0, 1]) + datagram                          # as is, to the agent
            # Header fields + a body, re-sealed by the fuzzer: the plaintext where the vector has it in
            # one uncompressed datagram, else the ciphertext (as good as any bytes).
            body = datagram[26:-16]
            if "payload_text" in vector and len(datagrams) == 1 and not bytearray(datagram)[4] & 1:
                body = vector["payload_text"].encode("utf-8")
            yield bytes([1, 1]) + datagram[2:14] + body
            yield bytes([2, 1]) + datagram[2:14] + body
        if "payload_text" in vector:
            yield bytes([3, 1]) + vector["payload_text"].encode("utf-8")
        for name in ("hello", "welcome"):   # the enrolment vector
            if name in vector:
                yield bytes([4, 1]) + binascii.unhexlify(vector[name])


def main(target):
    os.makedirs(target, exist_ok=True)
    for n, seed in enumerate(seeds()):
        with open(os.path.join(target, "seed-%03d" % n), "wb") as handle:
            handle.write(seed)
    return n + 1


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")))
