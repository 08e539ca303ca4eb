"""An independent check of Veil's evidence: a receipt bundle read with other people's code.

The COSE_Sign1 signatures (of the receipt, and of the tree head of an inclusion proof) are verified by
pycose, the CBOR is decoded by cbor2, the salted digests are Python's hmac, and the RFC 9162 inclusion
proof is recomputed here from the RFC's algorithm. Nothing of Veil's is used: if Veil's receipts were not
the COSE_Sign1 / CWT / RFC 9162 objects its documentation says, this would fail.

The attestation document's certificate chain is not checked here (Veil's verifier does that against the
Nitro root); what this script checks is that the receipt key the document commits to signed the receipt,
and that the document is the one the receipt names.

Usage: receipt_verify.py BUNDLE.json [--request FILE] [--response FILE]
Prints one JSON object: the decoded claims and every check; exits 1 if a check fails.
"""

import argparse
import base64
import hashlib
import hmac
import json
import sys

import cbor2
from pycose.keys import OKPKey
from pycose.keys.curves import Ed25519
from pycose.messages import Sign1Message

RECEIPT_PROFILE = "https://example.invalid/veil/eat/receipt/v1"
TREE_HEAD_PROFILE = "https://example.invalid/veil/eat/tree-head/v1"


def receipt_key(document: bytes) -> bytes:
    """The Ed25519 key in the attestation document's user_data commitment (read, not verified)."""
    cose = cbor2.loads(document)
    if isinstance(cose, cbor2.CBORTag):
        cose = cose.value
    payload = cbor2.loads(cose[2])
    commitment = cbor2.loads(payload["user_data"])
    assert commitment["v"] == 3, commitment["v"]
    return commitment["receipt_key"], commitment


def verify_sign1(encoded: bytes, key: bytes) -> dict:
    """pycose verifies the signature; returns the CWT claims."""
    msg = Sign1Message.decode(encoded)
    msg.key = OKPKey(crv=Ed25519, x=key)
    if not msg.verify_signature():
        raise ValueError("signature does not verify")
    return cbor2.loads(msg.payload)


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def root_from_path(leaf: bytes, index: int, size: int, path: list) -> bytes:
    """RFC 9162 section 2.1.3.2, written out."""
    if index >= size:
        raise ValueError("index out of range")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ValueError("proof too long")
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("proof too short")
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--request")
    ap.add_argument("--response")
    args = ap.parse_args()
    bundle = json.load(open(args.bundle))
    receipt = base64.b64decode(bundle["receipt"])
    salt = bytes.fromhex(bundle["salt"])
    document = base64.b64decode(bundle["attestation_document"])
    checks = {}
    key, commitment = receipt_key(document)
    claims = verify_sign1(receipt, key)
    checks["signature"] = True
    checks["profile"] = claims[265] == RECEIPT_PROFILE
    checks["document"] = claims[-65542] == hashlib.sha384(document).digest()
    models = {m["name"]: m["sha384"] for m in commitment["models"]}
    checks["model"] = models.get(claims[-65537]) == claims[-65538]
    checks["cti"] = claims[7][8:] == claims[-65543].to_bytes(8, "big")
    if args.request:
        got = hmac.new(salt, open(args.request, "rb").read(), hashlib.sha256).digest()
        checks["request"] = got == claims[-65539]
    if args.response:
        got = hmac.new(salt, open(args.response, "rb").read(), hashlib.sha256).digest()
        checks["response"] = got == claims[-65540]
    inc = bundle.get("inclusion")
    if inc:
        head = verify_sign1(base64.b64decode(inc["tree_head"]), key)
        path = [bytes.fromhex(h) for h in inc["path"]]
        root = root_from_path(leaf_hash(receipt), claims[-65543], head[-65545], path)
        checks["inclusion"] = head[265] == TREE_HEAD_PROFILE and root == head[-65546]
    out = {
        "checks": checks,
        "claims": {
            "iss": claims[1],
            "iat": claims[6],
            "model": claims[-65537],
            "model_sha384": claims[-65538].hex(),
            "mode": claims[-65541],
            "seq": claims[-65543],
            "prev": claims[-65544].hex(),
        },
    }
    print(json.dumps(out))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
