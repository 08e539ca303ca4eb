#!/usr/bin/env python3
"""An independent Oblivious HTTP client (RFC 9458) with Binary HTTP (RFC 9292), built on pyhpke.

Veil's gateway uses the Rust `hpke` crate; this client shares no code with it, so that the two agreeing
is evidence that both follow the RFCs rather than each other. HTTP goes through the standard library.

    ohttp_client.py vector PATH_TO_RFC9458_APPENDIX_A_JSON
        Reproduces RFC 9458 Appendix A: the key configuration, the Binary HTTP request, the Encapsulated
        Request byte for byte (with the RFC's fixed ephemeral key), and the decapsulation of the RFC's
        Encapsulated Response. Exit 1 on any mismatch.

    ohttp_client.py infer URL MODEL REQUEST_JSON_FILE [OPTIONS]
    ohttp_client.py get URL PATH [OPTIONS]
        OPTIONS: [--sha384 HEX | --no-veil-headers] [--aead aes256|chacha] [--no-date] [--pad N]
                 [--truncate] [--tamper] [--dump-request PATH]
        Fetches URL/.well-known/ohttp-gateway's key list, encapsulates POST /v2/models/MODEL/infer with
        the file's KServe v2 JSON (or GET PATH), posts it to the gateway and prints one JSON line:
            {"layer": "target", "status": S, "headers": {...}, "body": ..., "padding": N}
        for the decapsulated response (whatever its status), or
            {"layer": "gateway", "status": S, "headers": {...}, "body": ...}
        when the gateway refused in the clear (nothing was decapsulated). `body` is parsed JSON when the
        content type says JSON, text otherwise.
        The inner request carries content-type, date (IMF-fixdate; not with --no-date) and, with --sha384,
        veil-model-sha384; --no-veil-headers states that no veil-* header is sent (it cannot be combined
        with --sha384). --pad appends N zero bytes of Binary HTTP padding; --truncate leaves out the
        trailing empty sections (RFC 9292 §3.8), as RFC 9458 Appendix A does; --tamper flips the first
        ciphertext byte of the Encapsulated Request before sending it; --dump-request writes the
        plaintext Binary HTTP request to PATH.

Exit codes: 0 a decapsulated response was printed; 3 the gateway refused in the clear (line printed);
1 a protocol failure (bad key list, response that does not decrypt or parse; message on stderr); 2 usage.
"""
from __future__ import annotations

import argparse
import email.utils
import json
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKeyPair

# RFC 9458 §3.1, §4.1, §4.3, §4.4 and §9.
KEM_X25519_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
X25519_PUBLIC_KEY_LEN = 32
HEADER_LEN = 7  # key id (1), KEM (2), KDF (2), AEAD (2)
REQUEST_LABEL = b"message/bhttp request"
RESPONSE_LABEL = b"message/bhttp response"
KEYS_MEDIA_TYPE = "application/ohttp-keys"
REQUEST_MEDIA_TYPE = "message/ohttp-req"
RESPONSE_MEDIA_TYPE = "message/ohttp-res"
GATEWAY_PATH = "/.well-known/ohttp-gateway"  # RFC 9540 §4

AEADS = {"aes256": AEADId.AES256_GCM, "chacha": AEADId.CHACHA20_POLY1305, "aes128": AEADId.AES128_GCM}


class ProtocolError(Exception):
    """A message or key list that does not follow the RFCs, or a response that does not decrypt."""


# --- RFC 9000 §16 variable-length integers -----------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """The shortest encoding of `n` (0 <= n < 2**62)."""
    for length, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if 0 <= n < 1 << (8 * length - 2):
            return (n | prefix << (8 * length - 8)).to_bytes(length, "big")
    raise ValueError(f"{n} does not fit a variable-length integer")


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); the two high bits of the first byte give the length."""
    if pos >= len(data):
        raise ProtocolError(f"truncated: variable-length integer expected at offset {pos}")
    length = 1 << (data[pos] >> 6)
    if pos + length > len(data):
        raise ProtocolError(f"truncated: {length}-byte variable-length integer at offset {pos}")
    value = data[pos] & 0x3F
    for b in data[pos + 1 : pos + length]:
        value = value << 8 | b
    return value, pos + length


def _vec(b: bytes) -> bytes:
    return encode_varint(len(b)) + b


# --- RFC 9292 Binary HTTP, known-length messages ----------------------------------------------------------


def encode_request(
    method: str,
    scheme: str,
    authority: str,
    path: str,
    headers: list[tuple[str, str]] = (),
    content: bytes = b"",
    *,
    pad: int = 0,
    truncate: bool = False,
) -> bytes:
    """A known-length request (framing indicator 0, §3.1) with no trailers.

    Field names are written lower-case, as §3.6 asks. `truncate` leaves out the trailing empty sections
    (§3.8), as RFC 9458 Appendix A's request does; `pad` appends that many zero bytes (§3.8)."""
    fields = b"".join(_vec(n.lower().encode("ascii")) + _vec(v.encode("latin-1")) for n, v in headers)
    control = [_vec(x.encode("ascii")) for x in (method, scheme, authority, path)]
    sections = [_vec(fields), _vec(content), encode_varint(0)]  # header section, content, trailer section
    if truncate:
        while sections and sections[-1] == b"\x00":
            sections.pop()
    return encode_varint(0) + b"".join(control) + b"".join(sections) + b"\x00" * pad


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    content: bytes
    informational: list[tuple[int, list[tuple[str, str]]]] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    padding: int = 0


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        value, self.pos = decode_varint(self.data, self.pos)
        return value

    def vec(self, what: str) -> bytes:
        n = self.varint()
        if self.pos + n > len(self.data):
            raise ProtocolError(f"truncated: {what} of {n} bytes at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def fields(self, what: str) -> list[tuple[str, str]]:
        """A known-length field section; absent (truncated message, §3.8) reads as empty."""
        if self.at_end():
            return []
        section, out = _Reader(self.vec(what)), []
        while not section.at_end():
            name, value = section.vec(f"{what} field name"), section.vec(f"{what} field value")
            if not name or name != name.lower():
                raise ProtocolError(f"{what}: field name {name!r} is empty or not lower-case (RFC 9292 §3.6)")
            out.append((name.decode("ascii"), value.decode("latin-1")))
        return out


def parse_response(data: bytes) -> Response:
    """A known-length response (framing indicator 1, §3.1): informational responses, then the final one.
    Whatever follows the trailer section must be zero padding (§3.8)."""
    r = _Reader(data)
    framing = r.varint()
    if framing != 1:
        raise ProtocolError(f"framing indicator {framing}: not a known-length response (1)")
    informational = []
    while True:
        status = r.varint()
        fields = r.fields("header section")
        if 100 <= status < 200:
            informational.append((status, fields))
            continue
        if not 200 <= status < 600:
            raise ProtocolError(f"status {status} is not a final HTTP status")
        break
    content = b"" if r.at_end() else r.vec("content")
    trailers = r.fields("trailer section")
    padding = data[r.pos :]
    if any(padding):
        raise ProtocolError(f"the {len(padding)} bytes after the message are not all zeros (RFC 9292 §3.8)")
    return Response(status, fields, content, informational, trailers, len(padding))


# --- RFC 9458 key configurations and encapsulation ---------------------------------------------------------


@dataclass
class KeyConfig:
    key_id: int
    kem_id: int
    public_key: bytes
    suites: list[tuple[int, int]]  # (KDF, AEAD)


def parse_key_configs(data: bytes) -> list[KeyConfig]:
    """An `application/ohttp-keys` body (§3.2): each key configuration behind a 2-byte length. A list with
    any encoding error is refused whole, as §3.2 asks. Configurations for KEMs other than X25519 are
    skipped (this client cannot use them)."""
    configs, pos = [], 0
    if not data:
        raise ProtocolError("empty key configuration list")
    while pos < len(data):
        if pos + 2 > len(data):
            raise ProtocolError("key configuration list: truncated length")
        (n,) = struct.unpack_from(">H", data, pos)
        c = data[pos + 2 : pos + 2 + n]
        pos += 2 + n
        if len(c) != n or n < 3:
            raise ProtocolError("key configuration list: truncated configuration")
        key_id, kem_id = c[0], struct.unpack_from(">H", c, 1)[0]
        if kem_id != KEM_X25519_SHA256:
            continue
        at = 3 + X25519_PUBLIC_KEY_LEN
        if len(c) < at + 2:
            raise ProtocolError(f"key configuration {key_id}: truncated")
        (suites_len,) = struct.unpack_from(">H", c, at)
        if suites_len < 4 or suites_len % 4 or at + 2 + suites_len != n:
            raise ProtocolError(f"key configuration {key_id}: symmetric algorithms of {suites_len} bytes")
        suites = [struct.unpack_from(">HH", c, at + 2 + i) for i in range(0, suites_len, 4)]
        configs.append(KeyConfig(key_id, kem_id, bytes(c[3:at]), suites))
    return configs


class RequestContext:
    """What opens the response to one Encapsulated Request: the suite, `enc` and the HPKE sender context."""

    def __init__(self, suite: CipherSuite, enc: bytes, sender):
        self.suite, self.enc, self.sender = suite, enc, sender

    def open_response(self, enc_response: bytes) -> bytes:
        """RFC 9458 §4.4, client side: the Binary HTTP response inside an Encapsulated Response."""
        aead = self.suite.aead
        nk, nn = aead.key_size, aead.nonce_size
        nonce_len = max(nk, nn)
        if len(enc_response) < nonce_len + aead.tag_size:
            raise ProtocolError(f"Encapsulated Response of {len(enc_response)} bytes is truncated")
        secret = self.sender.export(RESPONSE_LABEL, nonce_len)
        response_nonce, ct = enc_response[:nonce_len], enc_response[nonce_len:]
        prk = self.suite.kdf.extract(self.enc + response_nonce, secret)  # salt = enc || response_nonce
        key = self.suite.kdf.expand(prk, b"key", nk)
        nonce = self.suite.kdf.expand(prk, b"nonce", nn)
        try:
            return aead.import_key(key).open(ct, nonce, b"")
        except Exception as e:  # pyhpke raises its own error types; any failure here is an AEAD failure
            raise ProtocolError(f"the Encapsulated Response does not decrypt ({type(e).__name__})") from e


def encapsulate(
    config: KeyConfig, aead: AEADId, request: bytes, *, ephemeral: KEMKeyPair | None = None
) -> tuple[bytes, RequestContext]:
    """RFC 9458 §4.3: hdr || enc || Seal(request) under `config` with HKDF-SHA256 and `aead`.
    `ephemeral` fixes the ephemeral key (test vectors only)."""
    if config.kem_id != KEM_X25519_SHA256 or (KDF_HKDF_SHA256, aead.value) not in config.suites:
        raise ProtocolError(f"key configuration {config.key_id} does not offer HKDF-SHA256 with AEAD {aead.value:#06x}")
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, aead)
    header = struct.pack(">BHHH", config.key_id, config.kem_id, KDF_HKDF_SHA256, aead.value)
    public_key = suite.kem.deserialize_public_key(config.public_key)
    enc, sender = suite.create_sender_context(public_key, REQUEST_LABEL + b"\x00" + header, eks=ephemeral)
    return header + enc + sender.seal(request, b""), RequestContext(suite, enc, sender)


# --- `vector`: RFC 9458 Appendix A -------------------------------------------------------------------------


def x25519_public(secret: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()


def check_vector(path: str) -> int:
    with open(path) as f:
        raw = json.load(f)
    hex_fields = ("skR", "pkR", "key_config", "request", "skE", "pkE", "encapsulated_request", "response",
                  "encapsulated_response")
    v = {**raw, **{k: bytes.fromhex(raw[k]) for k in hex_fields}}
    failures = []

    def check(what: str, got, want):
        if got == want:
            print(f"ok: {what}")
        else:
            show = lambda x: x.hex() if isinstance(x, (bytes, bytearray)) else repr(x)
            print(f"MISMATCH: {what}\n  got  {show(got)}\n  want {show(want)}")
            failures.append(what)

    aead_id = int(v["suite"]["aead"].split()[0], 16)
    configs = parse_key_configs(struct.pack(">H", len(v["key_config"])) + v["key_config"])
    check("one key configuration in the list", len(configs), 1)
    config = configs[0]
    check("key id", config.key_id, v["key_id"])
    check("public key in the configuration = X25519(skR)", config.public_key, x25519_public(v["skR"]))
    check("public key in the configuration = pkR", config.public_key, v["pkR"])
    check("suites offered", config.suites, [(KDF_HKDF_SHA256, 0x0001), (KDF_HKDF_SHA256, 0x0003)])

    request = encode_request("GET", "https", "example.com", "/", truncate=True)
    check("Binary HTTP request GET https://example.com/ (truncated, §3.8)", request, v["request"])

    check("pkE = X25519(skE)", x25519_public(v["skE"]), v["pkE"])
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId(aead_id))
    ephemeral = KEMKeyPair(suite.kem.deserialize_private_key(v["skE"]), suite.kem.deserialize_public_key(v["pkE"]))
    enc_request, context = encapsulate(config, AEADId(aead_id), v["request"], ephemeral=ephemeral)
    check("Encapsulated Request, byte for byte", enc_request, v["encapsulated_request"])

    plain = context.open_response(v["encapsulated_response"])
    check("decapsulated response", plain, v["response"])
    response = parse_response(plain)
    check("response status", response.status, 200)
    check("response headers and content", (response.headers, response.content), ([], b""))

    tampered = bytearray(v["encapsulated_response"])
    tampered[-1] ^= 0x01
    try:
        context.open_response(bytes(tampered))
        check("a tampered Encapsulated Response is refused", "accepted", "refused")
    except ProtocolError:
        check("a tampered Encapsulated Response is refused", "refused", "refused")

    if failures:
        print(f"{len(failures)} mismatch(es) with RFC 9458 Appendix A", file=sys.stderr)
        return 1
    print("RFC 9458 Appendix A reproduced")
    return 0


# --- `infer`: a request to a Veil gateway ------------------------------------------------------------------

# No proxy from the environment: the tests talk to a loopback gateway.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with _HTTP.open(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def show_body(content_type: str, body: bytes):
    if "json" in content_type:
        try:
            return json.loads(body)
        except ValueError:
            pass
    return body.decode("utf-8", "replace")


def exchange(args: argparse.Namespace, method: str, path: str, headers: list[tuple[str, str]], content: bytes) -> int:
    """Fetches the key list, sends one encapsulated request, prints the one-line result (module doc)."""
    base = args.url.rstrip("/")
    status, outer, body = http("GET", base + GATEWAY_PATH, None, {"accept": KEYS_MEDIA_TYPE})
    if status != 200 or media_type(outer) != KEYS_MEDIA_TYPE:
        raise ProtocolError(f"key list: HTTP {status}, content type {outer.get('content-type')!r}: {body[:200]!r}")
    aead = AEADS[args.aead]
    usable = [c for c in parse_key_configs(body) if (KDF_HKDF_SHA256, aead.value) in c.suites]
    if not usable:
        raise ProtocolError(f"the gateway offers no X25519 key with HKDF-SHA256 and {aead.name}")

    headers = list(headers)
    if not args.no_date:
        headers.append(("date", email.utils.formatdate(usegmt=True)))  # IMF-fixdate (RFC 9458 §6.5.1)
    if args.sha384 is not None:
        headers.append(("veil-model-sha384", args.sha384.lower()))
    authority = urllib.parse.urlsplit(base).netloc
    request = encode_request(method, "https", authority, path, headers, content, pad=args.pad, truncate=args.truncate)
    if args.dump_request:
        with open(args.dump_request, "wb") as f:
            f.write(request)

    enc_request, context = encapsulate(usable[0], aead, request)
    if args.tamper:
        flipped = bytearray(enc_request)
        flipped[HEADER_LEN + X25519_PUBLIC_KEY_LEN] ^= 0x01  # the first byte of the ciphertext
        enc_request = bytes(flipped)
    status, outer, body = http(
        "POST", base + GATEWAY_PATH, enc_request, {"content-type": REQUEST_MEDIA_TYPE, "accept": RESPONSE_MEDIA_TYPE}
    )
    if status != 200:
        print(json.dumps({"layer": "gateway", "status": status, "headers": outer, "body": show_body(media_type(outer), body)}))
        return 3
    if media_type(outer) != RESPONSE_MEDIA_TYPE:
        raise ProtocolError(f"gateway answered 200 with content type {outer.get('content-type')!r}")
    response = parse_response(context.open_response(body))
    inner: dict[str, str] = {}
    for n, v in response.headers:
        inner[n] = f"{inner[n]}, {v}" if n in inner else v
    out = {
        "layer": "target",
        "status": response.status,
        "headers": inner,
        "body": show_body(media_type(inner), response.content),
        "padding": response.padding,
    }
    print(json.dumps(out))
    return 0


def infer(args: argparse.Namespace) -> int:
    with open(args.request, "rb") as f:
        content = f.read()
    path = f"/v2/models/{urllib.parse.quote(args.model, safe='')}/infer"
    return exchange(args, "POST", path, [("content-type", "application/json")], content)


def get(args: argparse.Namespace) -> int:
    return exchange(args, "GET", args.path, [("accept", "application/json")], b"")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("vector", help="reproduce RFC 9458 Appendix A")
    v.add_argument("path")
    i = sub.add_parser("infer", help="one KServe v2 inference through a Veil OHTTP gateway")
    i.add_argument("url")
    i.add_argument("model")
    i.add_argument("request", help="a file holding the KServe v2 JSON request")
    g = sub.add_parser("get", help="one GET of a KServe v2 route through a Veil OHTTP gateway")
    g.add_argument("url")
    g.add_argument("path", help="e.g. /v2/health/ready or /v2/models/MODEL")
    for c in (i, g):
        veil = c.add_mutually_exclusive_group()
        veil.add_argument("--sha384", help="the model's SHA-384 (96 hex digits), sent as veil-model-sha384")
        veil.add_argument("--no-veil-headers", action="store_true", help="send no veil-* header at all")
        c.add_argument("--aead", choices=sorted(AEADS), default="aes256")
        c.add_argument("--no-date", action="store_true", help="send no date header")
        c.add_argument("--pad", type=int, default=0, metavar="N", help="append N zero bytes to the request")
        c.add_argument("--truncate", action="store_true", help="leave out trailing empty sections (RFC 9292 §3.8)")
        c.add_argument("--tamper", action="store_true", help="flip the first ciphertext byte before sending")
        c.add_argument("--dump-request", metavar="PATH", help="also write the Binary HTTP request (plaintext) there")
    args = p.parse_args(argv)
    try:
        return {"vector": lambda: check_vector(args.path), "infer": lambda: infer(args), "get": lambda: get(args)}[
            args.command
        ]()
    except (ProtocolError, OSError) as e:
        print(f"ohttp_client: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
