// myko.js's CBOR codec on its own (no server): the shortest integer heads, floats, text,
// nesting, and what it refuses. Byte values are those of RFC 8949's examples (Appendix A).

import assert from "node:assert/strict";
import { test } from "node:test";

import { cbor } from "../../myko_django/static/myko/myko.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const bytes = (text) => new Uint8Array(Buffer.from(text, "hex"));

test("integers are written in their shortest form and read back exactly", () => {
  const cases = [
    [0, "00"],
    [23, "17"],
    [24, "1818"],
    [255, "18ff"],
    [256, "190100"],
    [65535, "19ffff"],
    [65536, "1a00010000"],
    [4294967296, "1b0000000100000000"],
    [Number.MAX_SAFE_INTEGER, "1b001fffffffffffff"],
    [2n ** 64n - 1n, "1bffffffffffffffff"],
    [-1, "20"],
    [-24, "37"],
    [-25, "3818"],
    [-1000, "3903e7"],
    [-(2n ** 64n), "3bffffffffffffffff"],
  ];
  for (const [value, encoded] of cases) {
    assert.equal(hex(cbor.encode(value)), encoded, String(value));
    assert.equal(cbor.decode(bytes(encoded)), value, encoded);
  }
  // Beyond 2**53 a number would round: such values decode as BigInt, smaller ones as numbers.
  assert.equal(cbor.decode(bytes("1b0020000000000000")), 2n ** 53n);
  assert.equal(cbor.decode(bytes("3b001fffffffffffff")), -(2n ** 53n));
  assert.equal(cbor.decode(bytes("3b001ffffffffffffe")), Number.MIN_SAFE_INTEGER);
  assert.throws(() => cbor.encode(2n ** 64n), RangeError);
});

test("floats, text, booleans, null, arrays and maps", () => {
  assert.equal(hex(cbor.encode(1.1)), "fb3ff199999999999a");
  assert.equal(cbor.decode(bytes("f93c00")), 1); // half
  assert.equal(cbor.decode(bytes("f97bff")), 65504);
  assert.equal(cbor.decode(bytes("fa47c35000")), 100000); // single
  assert.equal(cbor.decode(bytes("f90001")), 5.960464477539063e-8);
  assert.equal(hex(cbor.encode("ü")), "62c3bc");
  assert.equal(hex(cbor.encode([1, [2, 3], { a: true, b: null }])), "8301820203a26161f56162f6");
  const message = { event: "ws:m:query", data: { query: { tx: "t", ids: ["a"] }, window: null, deep: [{ x: -1.5 }] } };
  assert.deepEqual(cbor.decode(cbor.encode(message)), message);
  // As JSON.stringify: undefined members are left out, a Date is its ISO string.
  assert.deepEqual(cbor.decode(cbor.encode({ a: undefined, at: new Date(0) })), { at: "1970-01-01T00:00:00.000Z" });
  const proto = cbor.decode(cbor.encode(JSON.parse('{"__proto__": 1}')));
  assert.equal(Object.getPrototypeOf(proto), Object.prototype);
  assert.equal(proto.__proto__, 1);
});

test("what the protocol does not carry is refused", () => {
  assert.throws(() => cbor.encode(NaN), TypeError);
  assert.throws(() => cbor.encode(new Uint8Array(1)), TypeError);
  assert.throws(() => cbor.decode(bytes("c11a514b67b0")), SyntaxError); // a tag
  assert.throws(() => cbor.decode(bytes("a1016161")), SyntaxError); // an integer key
  assert.throws(() => cbor.decode(bytes("6261")), SyntaxError); // ends inside the text
  assert.throws(() => cbor.decode(bytes("0000")), SyntaxError); // bytes after the message
  assert.throws(() => cbor.decode(bytes("62c328")), TypeError); // not UTF-8
  let deep = [];
  for (let i = 0; i < 200; i++) deep = [deep];
  assert.throws(() => cbor.encode(deep), RangeError);
});
