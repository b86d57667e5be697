#!/usr/bin/env python3
"""Independent Python reference check of tests/vectors/packet_v1.json.

Written from the crate README's specification (byte layout, processing at a
hop, construction, cryptographic choices) and the randomness description in
tests/vectors.rs, without using the Rust implementation. It checks:

1. every node's public key is X25519(secret, 9);
2. every packet vector and every SURB vector's reply packet, processed hop by
   hop with the nodes' secrets: each hop's MAC, replay tag, routing command
   (type, next node id / mailbox, delay, zero bytes) and forwarded packet,
   the delivered message or payload, the SURB id, the SURB secrets encoding,
   and that opening the reply with the secrets gives `opened`;
3. packet creation: rebuilding every packet, SURB and SURB secrets from the
   deterministic randomness gives exactly the stored bytes, and the reply
   packet built from the SURB gives exactly `reply_packet`.

Run:

    python3 -m venv /tmp/pyref-venv
    /tmp/pyref-venv/bin/pip install blake3 cryptography
    /tmp/pyref-venv/bin/python verify_vectors.py [path/to/packet_v1.json]

Exits non-zero with a message on the first mismatch; prints a one-line
summary on success.
"""

import hmac
import json
import os
import sys

import blake3
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

# --- constants from the README's byte layout --------------------------------

VERSION = 0x01
MAX_HOPS = 5
BLOCK = 88  # routing block
BETA = MAX_HOPS * BLOCK  # 440
HEADER = 1 + 4 + 32 + 16 + BETA  # 493
PACKET = 2048
PAYLOAD = PACKET - HEADER  # 1555
TAG = 16
MESSAGE_MAX = PAYLOAD - TAG  # 1539
SURB_ID = 16
SURB_SIZE = 1 + 32 + HEADER + 32  # 558
LIONESS_KEY = 128

CMD_RELAY, CMD_DELIVER, CMD_DELIVER_REPLY = 0x01, 0x02, 0x03

HOP_KEYS_CONTEXT = "chainmail-packet v1 2026-11 hop keys"
SURB_REPLY_CONTEXT = "chainmail-packet v1 2026-11 surb reply key"
TEST_RNG_CONTEXT = "chainmail-packet test rng"  # tests/vectors.rs

BASEPOINT = (9).to_bytes(32, "little")

checks = 0


class Mismatch(Exception):
    pass


def check(cond, what):
    global checks
    if not cond:
        raise Mismatch(what)
    checks += 1


def expect_eq(actual, expected, what):
    if actual != expected:
        if isinstance(actual, (bytes, bytearray)) and isinstance(expected, (bytes, bytearray)):
            at = next(
                (i for i, (a, b) in enumerate(zip(actual, expected)) if a != b),
                min(len(actual), len(expected)),
            )
            lo = max(0, at - 8)
            raise Mismatch(
                f"{what}: first difference at byte {at} "
                f"(lengths: expected {len(expected)}, actual {len(actual)})\n"
                f"  expected [{lo}..] {expected[lo:lo + 48].hex()}\n"
                f"  actual   [{lo}..] {actual[lo:lo + 48].hex()}"
            )
        raise Mismatch(f"{what}: expected {expected!r}, actual {actual!r}")
    check(True, what)


# --- primitives ---------------------------------------------------------------


def xor(a, b):
    assert len(a) == len(b)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


P25519 = 2**255 - 19


def on_curve(u_bytes):
    """True if u (top bit ignored, reduced mod p) is the u-coordinate of a
    point of Curve25519 rather than of its twist: u^3 + 486662 u^2 + u is a
    square mod p (README, "Processing at a hop", step 2)."""
    u = (int.from_bytes(u_bytes, "little") & ((1 << 255) - 1)) % P25519
    rhs = (u * u * u + 486662 * u * u + u) % P25519
    return pow(rhs, (P25519 - 1) // 2, P25519) in (0, 1)


def x25519(scalar, u):
    return X25519PrivateKey.from_private_bytes(scalar).exchange(
        X25519PublicKey.from_public_bytes(u)
    )


def chacha20(key, length):
    """RFC 8439 ChaCha20 keystream, 12-byte zero nonce, block counter 0."""
    nonce16 = (0).to_bytes(4, "little") + bytes(12)
    enc = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor()
    return enc.update(bytes(length))


def keyed_blake3(key, data, length=32):
    return blake3.blake3(data, key=key).digest(length=length)


def derive_key(context, material, length):
    return blake3.blake3(material, derive_key_context=context).digest(length=length)


def lioness_encrypt(key, block):
    """LIONESS (Anderson-Biham) with L = first 32 bytes, R = the rest.

    Round structure (not spelled out in the README; this is the textbook
    construction, and the vectors confirm it):
      R ^= ChaCha20(L ^ K1); L ^= BLAKE3-keyed(K2, R)[..32];
      R ^= ChaCha20(L ^ K3); L ^= BLAKE3-keyed(K4, R)[..32].
    """
    assert len(key) == LIONESS_KEY
    k1, k2, k3, k4 = (key[i : i + 32] for i in range(0, 128, 32))
    left, right = block[:32], block[32:]
    right = xor(right, chacha20(xor(left, k1), len(right)))
    left = xor(left, keyed_blake3(k2, right))
    right = xor(right, chacha20(xor(left, k3), len(right)))
    left = xor(left, keyed_blake3(k4, right))
    return left + right


def lioness_decrypt(key, block):
    assert len(key) == LIONESS_KEY
    k1, k2, k3, k4 = (key[i : i + 32] for i in range(0, 128, 32))
    left, right = block[:32], block[32:]
    left = xor(left, keyed_blake3(k4, right))
    right = xor(right, chacha20(xor(left, k3), len(right)))
    left = xor(left, keyed_blake3(k2, right))
    right = xor(right, chacha20(xor(left, k1), len(right)))
    return left + right


class HopKeys:
    """Step 3 of "Processing at a hop": 208 bytes of derive-key output."""

    def __init__(self, version, epoch, alpha, public, shared):
        check(shared != bytes(32), "X25519 result is contributory")
        k = derive_key(
            HOP_KEYS_CONTEXT,
            bytes([version]) + epoch.to_bytes(4, "big") + alpha + public + shared,
            208,
        )
        self.rho = k[0:32]
        self.mu = k[32:64]
        self.payload = k[64:192]
        self.replay_tag = k[192:208]


def header_mac(mu, version, epoch, beta):
    return keyed_blake3(mu, bytes([version]) + epoch.to_bytes(4, "big") + beta, 32)[:16]


# --- deterministic randomness (tests/vectors.rs module docs) -----------------


class XofRng:
    """BLAKE3 XOF of derive_key("chainmail-packet test rng", seed)."""

    def __init__(self, seed):
        self.h = blake3.blake3(seed.encode(), derive_key_context=TEST_RNG_CONTEXT)
        self.pos = 0

    def take(self, n):
        out = self.h.digest(length=n, seek=self.pos)
        self.pos += n
        return out


# --- processing -----------------------------------------------------------------


def process(x, public, epoch, packet, what):
    """One hop. Returns (replay_tag, command, fields, next_packet_or_payload)."""
    check(len(packet) == PACKET, f"{what}: packet is {PACKET} bytes")
    version = packet[0]
    expect_eq(version, VERSION, f"{what}: version")
    expect_eq(int.from_bytes(packet[1:5], "big"), epoch, f"{what}: epoch")
    alpha = packet[5:37]
    gamma = packet[37:53]
    beta = packet[53:HEADER]
    payload = packet[HEADER:]

    check(on_curve(alpha), f"{what}: α is on the curve")
    keys = HopKeys(version, epoch, alpha, public, x25519(x, alpha))
    check(
        hmac.compare_digest(header_mac(keys.mu, version, epoch, beta), gamma),
        f"{what}: header MAC γ verifies",
    )
    stream = xor(beta + bytes(BLOCK), chacha20(keys.rho, BETA + BLOCK))
    block, next_beta = stream[:BLOCK], stream[BLOCK:]
    payload = lioness_decrypt(keys.payload, payload)

    cmd = block[0]
    ident = block[1:33]
    delay = int.from_bytes(block[33:37], "big")
    expect_eq(block[85:88], bytes(3), f"{what}: block bytes 85..88 zero")
    if cmd == CMD_RELAY:
        next_packet = packet[:5] + block[37:69] + block[69:85] + next_beta + payload
        return keys.replay_tag, cmd, (ident, delay), next_packet
    if cmd == CMD_DELIVER:
        expect_eq(block[37:85], bytes(48), f"{what}: deliver block zero bytes")
        expect_eq(payload[:TAG], bytes(TAG), f"{what}: payload tag is zero")
        return keys.replay_tag, cmd, (ident, delay), payload[TAG:]
    if cmd == CMD_DELIVER_REPLY:
        expect_eq(block[53:85], bytes(32), f"{what}: deliver-reply block zero bytes")
        return keys.replay_tag, cmd, (ident, delay, block[37:53]), payload
    raise Mismatch(f"{what}: unknown command {cmd:#x}")


def run_route(nodes, epoch, packet, steps, hops, delays, what):
    """Processes along nodes[:hops]; checks steps; returns the last result."""
    expect_eq(len(steps), hops, f"{what}: number of steps")
    for i in range(hops):
        x, public, _ = nodes[i]
        tag, cmd, fields, out = process(x, public, epoch, packet, f"{what} hop {i}")
        expect_eq(tag.hex(), steps[i]["replay_tag"], f"{what} hop {i}: replay tag")
        expect_eq(fields[1], delays[i], f"{what} hop {i}: delay")
        if i + 1 < hops:
            expect_eq(cmd, CMD_RELAY, f"{what} hop {i}: relay command")
            expect_eq(fields[0], nodes[i + 1][2], f"{what} hop {i}: next node id")
            check(steps[i]["forwarded"] is not None, f"{what} hop {i}: forwarded present")
            expect_eq(out, bytes.fromhex(steps[i]["forwarded"]), f"{what} hop {i}: forwarded packet")
            packet = out
        else:
            check(steps[i]["forwarded"] is None, f"{what} hop {i}: last hop forwards nothing")
            return cmd, fields, out
    raise Mismatch(f"{what}: no final action")


# --- creation -------------------------------------------------------------------


def routing_block(cmd, ident, delay, tail37=b""):
    block = bytes([cmd]) + ident + delay.to_bytes(4, "big") + tail37
    return block + bytes(BLOCK - len(block))


def build_header(rng, epoch, route, final_block):
    """route: list of (public, node_id, delay). Returns (header, payload keys)."""
    n = len(route)
    assert 1 <= n <= MAX_HOPS
    # One ephemeral secret per hop, in route order.
    alphas, keys = [], []
    for public, _, _ in route:
        e = rng.take(32)
        alpha = x25519(e, BASEPOINT)
        alphas.append(alpha)
        keys.append(HopKeys(VERSION, epoch, alpha, public, x25519(e, public)))
    streams = [chacha20(k.rho, BETA + BLOCK) for k in keys]

    # Sphinx filler: what hops 0..n-2 shift into the tail of the last β.
    filler = b""
    for i in range(n - 1):
        filler = xor(filler + bytes(BLOCK), streams[i][BETA + BLOCK - len(filler) - BLOCK :])
    assert len(filler) == (n - 1) * BLOCK

    # Last hop: routing block and random padding (encrypted under its ρ),
    # then the filler.
    padding = rng.take(BETA - BLOCK - len(filler))
    head = final_block + padding
    beta = xor(head, streams[n - 1][: len(head)]) + filler
    gamma = header_mac(keys[n - 1].mu, VERSION, epoch, beta)

    for i in range(n - 2, -1, -1):
        _, next_id, _ = route[i + 1]
        block = routing_block(CMD_RELAY, next_id, route[i][2], alphas[i + 1] + gamma)
        beta = xor(block + beta[: BETA - BLOCK], streams[i][:BETA])
        gamma = header_mac(keys[i].mu, VERSION, epoch, beta)

    header = bytes([VERSION]) + epoch.to_bytes(4, "big") + alphas[0] + gamma + beta
    assert len(header) == HEADER
    return header, [k.payload for k in keys]


def plaintext_payload(message):
    check(len(message) <= MESSAGE_MAX, "message fits")
    return bytes(TAG) + message + bytes(MESSAGE_MAX - len(message))


def build_packet(rng, epoch, route, mailbox, message):
    final = routing_block(CMD_DELIVER, mailbox, route[-1][2])
    header, payload_keys = build_header(rng, epoch, route, final)
    payload = plaintext_payload(message)
    for k in reversed(payload_keys):
        payload = lioness_encrypt(k, payload)
    return header + payload


def build_surb(rng, epoch, route, mailbox):
    surb_id = rng.take(SURB_ID)
    final = routing_block(CMD_DELIVER_REPLY, mailbox, route[-1][2], surb_id)
    header, payload_keys = build_header(rng, epoch, route, final)
    seed = rng.take(32)
    surb = bytes([VERSION]) + route[0][1] + header + seed
    assert len(surb) == SURB_SIZE
    # SurbSecrets encoding (README, "Byte layout"): version ‖ id ‖ hop
    # count (u8) ‖ hop payload keys in route order ‖ reply-key seed.
    secrets = bytes([VERSION]) + surb_id + bytes([len(payload_keys)]) + b"".join(payload_keys) + seed
    return surb, secrets


def reply_key(seed):
    return derive_key(SURB_REPLY_CONTEXT, seed, LIONESS_KEY)


def surb_into_reply(surb, message):
    expect_eq(len(surb), SURB_SIZE, "SURB size")
    expect_eq(surb[0], VERSION, "SURB version")
    header, seed = surb[33 : 33 + HEADER], surb[33 + HEADER :]
    return header + lioness_encrypt(reply_key(seed), plaintext_payload(message))


def parse_secrets(data):
    check(len(data) >= 2 + SURB_ID + 32, "SURB secrets length")
    expect_eq(data[0], VERSION, "SURB secrets version")
    surb_id = data[1 : 1 + SURB_ID]
    n = data[1 + SURB_ID]
    check(1 <= n <= MAX_HOPS, "SURB secrets hop count")
    expect_eq(len(data), 2 + SURB_ID + n * LIONESS_KEY + 32, "SURB secrets length")
    off = 2 + SURB_ID
    keys = [data[off + i * LIONESS_KEY : off + (i + 1) * LIONESS_KEY] for i in range(n)]
    seed = data[off + n * LIONESS_KEY :]
    return surb_id, keys, seed


def surb_open(secrets, surb_id, payload):
    own_id, keys, seed = parse_secrets(secrets)
    expect_eq(surb_id, own_id, "SURB id matches secrets")
    for k in reversed(keys):
        payload = lioness_encrypt(k, payload)
    payload = lioness_decrypt(reply_key(seed), payload)
    expect_eq(payload[:TAG], bytes(TAG), "opened reply tag is zero")
    return payload[TAG:]


# --- driver ---------------------------------------------------------------------


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "vectors", "packet_v1.json"
    )
    with open(path) as f:
        doc = json.load(f)
    epoch = doc["epoch"]
    mailbox = bytes.fromhex(doc["mailbox"])

    # 1. Node keys.
    nodes = []
    for i, n in enumerate(doc["nodes"]):
        secret, public, ident = (bytes.fromhex(n[k]) for k in ("secret", "public", "id"))
        expect_eq(x25519(secret, BASEPOINT), public, f"node {i}: public = X25519(secret, 9)")
        nodes.append((secret, public, ident))

    def route(hops, delays):
        return [(nodes[i][1], nodes[i][2], delays[i]) for i in range(hops)]

    # 2 and 3 for forward packets.
    for v in doc["packets"]:
        what = f"packet '{v['rng_seed']}'"
        hops, delays = v["hops"], v["delays_ms"]
        expect_eq(len(delays), hops, f"{what}: delays")
        packet = bytes.fromhex(v["packet"])
        message = bytes.fromhex(v["message"])
        cmd, (ident, _), delivered = run_route(nodes, epoch, packet, v["steps"], hops, delays, what)
        expect_eq(cmd, CMD_DELIVER, f"{what}: final command is deliver")
        expect_eq(ident, mailbox, f"{what}: mailbox")
        expect_eq(delivered, bytes.fromhex(v["delivered"]), f"{what}: delivered message")
        expect_eq(delivered, message + bytes(MESSAGE_MAX - len(message)), f"{what}: delivered = message ‖ zeros")

        built = build_packet(XofRng(v["rng_seed"]), epoch, route(hops, delays), mailbox, message)
        expect_eq(built, packet, f"{what}: rebuilt packet")

    # 2 and 3 for SURBs.
    for v in doc["surbs"]:
        what = f"SURB '{v['rng_seed']}'"
        hops, delays = v["hops"], v["delays_ms"]
        surb = bytes.fromhex(v["surb"])
        secrets = bytes.fromhex(v["secrets"])
        reply_message = bytes.fromhex(v["reply_message"])
        reply_packet = bytes.fromhex(v["reply_packet"])

        expect_eq(surb[1:33], nodes[0][2], f"{what}: first hop id")
        expect_eq(surb_into_reply(surb, reply_message), reply_packet, f"{what}: reply packet from SURB")

        cmd, (ident, _, surb_id), payload = run_route(nodes, epoch, reply_packet, v["steps"], hops, delays, what)
        expect_eq(cmd, CMD_DELIVER_REPLY, f"{what}: final command is deliver reply")
        expect_eq(ident, mailbox, f"{what}: mailbox")
        expect_eq(surb_id, bytes.fromhex(v["surb_id"]), f"{what}: SURB id")
        expect_eq(payload, bytes.fromhex(v["delivered_payload"]), f"{what}: delivered payload")
        opened = surb_open(secrets, surb_id, payload)
        expect_eq(opened, bytes.fromhex(v["opened"]), f"{what}: opened reply")
        expect_eq(opened, reply_message + bytes(MESSAGE_MAX - len(reply_message)), f"{what}: opened = message ‖ zeros")

        built_surb, built_secrets = build_surb(XofRng(v["rng_seed"]), epoch, route(hops, delays), mailbox)
        expect_eq(built_surb, surb, f"{what}: rebuilt SURB")
        expect_eq(built_secrets, secrets, f"{what}: rebuilt SURB secrets")

    print(
        f"OK: {len(doc['nodes'])} node keys, {len(doc['packets'])} packets, "
        f"{len(doc['surbs'])} SURBs processed and rebuilt byte-exactly ({checks} checks)"
    )


if __name__ == "__main__":
    try:
        main()
    except Mismatch as e:
        print(f"MISMATCH: {e}", file=sys.stderr)
        sys.exit(1)
