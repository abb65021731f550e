// A second decoder of wire format v1, written from docs/wire-format.md alone (plain Node, no packages).
//
// Usage: node decoder.mjs DOC [ROOT]
//   DOC:  docs/wire-format.md;  ROOT: where the codebook file's path in the document starts (default .)
//
// It reads the document's shipped configuration (JSON block), recomputes the grid fingerprint,
// reads and verifies the codebook file, decodes every example message (hex dumps) and compares
// what it decoded with the document's "Decoded" values, and decodes the ZeroMQ example (topic,
// msgpack envelope, wire message). Any disagreement is printed to stderr and the exit status is 1.
// On success it prints JSON to stdout: the fingerprint it computed and, per codebook example, every
// cell's features rebuilt from the codebook file (the Python test compares them with Python's).

import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";

const failures = [];
function check(ok, what) {
  if (!ok) failures.push(what);
  return ok;
}

// -- reading the document ------------------------------------------------------------------------
// JSON whose long integers (time stamps in ns) become strings: a double cannot hold them.
function parseJson(text) {
  return JSON.parse(text.replace(/(?<![\w."])(-?\d{16,})(?![\w."])/g, '"$1"'));
}

function fencedAfter(text, label, lang) {
  const at = text.indexOf(label);
  if (at < 0) throw new Error(`the document has no ${label}`);
  const open = "```" + lang + "\n";
  const start = text.indexOf(open, at);
  const end = text.indexOf("```", start + open.length);
  return text.slice(start + open.length, end);
}

function parseHexdump(text) {
  const bytes = [];
  for (const line of text.trim().split("\n")) {
    const rest = line.slice(line.indexOf(":") + 1).trim();
    for (const b of rest.split(/\s+/)) bytes.push(parseInt(b, 16));
  }
  return Uint8Array.from(bytes);
}

// -- primitives ----------------------------------------------------------------------------------
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(parts) {
  let c = 0xffffffff;
  for (const p of parts) for (const b of p) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function half(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

class Reader {
  constructor(bytes, start = 0) {
    this.b = bytes;
    this.pos = start;
  }
  need(n, what) {
    if (this.pos + n > this.b.length) throw new Error(`truncated: ${what}`);
  }
  u8(what) {
    this.need(1, what);
    return this.b[this.pos++];
  }
  u16(what) {
    this.need(2, what);
    const v = this.b[this.pos] | (this.b[this.pos + 1] << 8);
    this.pos += 2;
    return v;
  }
  // LEB128, shortest form, at most as long as the largest value below `limit` needs
  varint(limit, what) {
    const maxLen = Math.max(1, Math.ceil((limit - 1).toString(2).length / 7));
    let value = 0;
    for (let i = 0; ; i++) {
      const byte = this.u8(what);
      if (i >= maxLen) throw new Error(`${what}: varint longer than ${maxLen} bytes`);
      value += (byte & 0x7f) * 2 ** (7 * i);
      if (!(byte & 0x80)) {
        if (i > 0 && byte === 0) throw new Error(`${what}: varint not in its shortest form`);
        break;
      }
    }
    if (value >= limit) throw new Error(`${what}: ${value} is not below ${limit}`);
    return value;
  }
  // n values of `bits` bits, MSB first, zero padding to the byte
  bits(n, bits, what) {
    const total = n * bits;
    const nbytes = Math.ceil(total / 8);
    this.need(nbytes, what);
    const out = [];
    let bit = 0;
    for (let i = 0; i < n; i++) {
      let v = 0;
      for (let j = 0; j < bits; j++, bit++) v = v * 2 + ((this.b[this.pos + (bit >> 3)] >> (7 - (bit & 7))) & 1);
      out.push(v);
    }
    for (; bit < nbytes * 8; bit++) {
      if ((this.b[this.pos + (bit >> 3)] >> (7 - (bit & 7))) & 1) throw new Error(`${what}: padding bits are not zero`);
    }
    this.pos += nbytes;
    return out;
  }
}

// -- the cell set --------------------------------------------------------------------------------
function cellSet(r, coding, N) {
  const n = r.varint(N + 1, "cell count");
  const cells = [];
  if (coding === 0) {
    if (n === 0) return cells;
    const k = r.u8("Rice parameter");
    if (k > 24) throw new Error(`Rice parameter ${k}`);
    const start = r.pos;
    let bit = 0;
    const readBit = () => {
      const at = start + (bit >> 3);
      if (at >= r.b.length) throw new Error("truncated: Rice bit stream");
      return (r.b[at] >> (7 - (bit++ & 7))) & 1;
    };
    const q = [];
    for (let i = 0; i < n; i++) {
      let v = 0;
      while (readBit()) v++;
      q.push(v);
    }
    let prev = -1;
    for (let i = 0; i < n; i++) {
      let rem = 0;
      for (let j = 0; j < k; j++) rem = rem * 2 + readBit();
      const d = q[i] * 2 ** k + rem;
      if (d >= N) throw new Error(`gap ${d} in a grid of ${N}`);
      prev = prev + d + 1;
      cells.push(prev);
    }
    while (bit & 7) if (readBit()) throw new Error("Rice padding bits are not zero");
    r.pos = start + bit / 8;
  } else if (coding === 1) {
    const nbytes = Math.ceil(N / 8);
    r.need(nbytes, "bitmap");
    for (let i = 0; i < nbytes * 8; i++) {
      if ((r.b[r.pos + (i >> 3)] >> (7 - (i & 7))) & 1) {
        if (i >= N) throw new Error("bitmap bit beyond the grid");
        cells.push(i);
      }
    }
    if (cells.length !== n) throw new Error(`bitmap holds ${cells.length} cells, the count says ${n}`);
    r.pos += nbytes;
  } else if (coding === 2) {
    let prev = -1;
    for (let i = 0; i < n; i++) {
      prev = prev + r.varint(N, "delta") + 1;
      cells.push(prev);
    }
  } else {
    const runs = r.varint(n + 1, "run count");
    if (n > 0 && runs === 0) throw new Error("cells in zero runs");
    let end = 0;
    for (let j = 0; j < runs; j++) {
      const gap = r.varint(N, "run gap");
      const len = r.varint(N, "run length") + 1;
      if (j > 0 && gap === 0) throw new Error("runs touch");
      const first = end + gap;
      for (let c = first; c < first + len; c++) cells.push(c);
      end = first + len;
    }
    if (cells.length !== n) throw new Error(`runs cover ${cells.length} cells, the count says ${n}`);
  }
  if (cells.length && cells[cells.length - 1] >= N) throw new Error("cell outside the grid");
  return cells;
}

// -- one message ---------------------------------------------------------------------------------
function decode(bytes, cfg, book) {
  if (bytes.length < 64) throw new Error("truncated header");
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (String.fromCharCode(...bytes.slice(0, 4)) !== "V2XM") throw new Error("bad magic");
  if (bytes[4] !== 1) throw new Error("unsupported version");
  const type = bytes[5];
  const flags = bytes[6];
  const unit = bytes[7];
  if (type < 1 || type > 6) throw new Error(`unknown type ${type}`);
  if (flags & 0xc0) throw new Error("reserved flags");
  const h = {
    type,
    flags,
    unit,
    sender: v.getInt32(8, true),
    seq: v.getUint32(12, true),
    stamp_ns: v.getBigInt64(16, true).toString(),
    pose: [v.getFloat64(24, true), v.getFloat64(32, true), v.getFloat32(40, true), v.getFloat32(44, true)],
    grid_fingerprint: hex32(v.getUint32(48, true)),
    codebook_id: hex32(v.getUint32(52, true)),
    payload_length: v.getUint32(56, true),
  };
  if (bytes.length !== 64 + h.payload_length) throw new Error("frame length is not 64 + payload length");
  if (crc32([bytes.subarray(0, 60), bytes.subarray(64)]) !== v.getUint32(60, true)) throw new Error("bad CRC-32");
  if (type !== 4 && h.grid_fingerprint !== cfg.grid_fingerprint) throw new Error("another grid");
  if (type === 1 && h.codebook_id !== cfg.codebook.identity) throw new Error("another codebook");
  const r = new Reader(bytes, 64);
  const coding = flags & 3;
  if (type === 1 || type === 2 || type === 3) {
    h.cells = cellSet(r, coding, cfg.H * cfg.W);
    const n = h.cells.length;
    if (type === 1) {
      const P = r.u8("indices per cell");
      if (P < 1 || P > 64) throw new Error(`P = ${P}`);
      const codes = r.bits(n * P, unit, "codes");
      h.codes = [];
      for (let i = 0; i < n; i++) h.codes.push(codes.slice(i * P, (i + 1) * P));
      if (codes.some((c) => c >= book.k)) throw new Error("code >= k");
      h.features = h.codes.map((row) => rebuild(book, row));
    } else {
      const C = r.u16("channels");
      const width = type === 2 ? 4 : 2;
      r.need(n * C * width, "features");
      h.features = [];
      for (let i = 0; i < n; i++) {
        const row = [];
        for (let c = 0; c < C; c++, r.pos += width) {
          row.push(width === 4 ? v.getFloat32(r.pos, true) : half(v.getUint16(r.pos, true)));
        }
        h.features.push(row);
      }
    }
  } else if (type === 5 || type === 6) {
    const Hb = Math.ceil(cfg.H / unit);
    const Wb = Math.ceil(cfg.W / unit);
    h.blocks = cellSet(r, coding, Hb * Wb);
    h.complement = Boolean(flags & 0x20);
    if (flags & 0x10) h.levels = r.bits(h.blocks.length, 2, "levels");
    if (type === 6 && !(flags & 0x10)) throw new Error("an offer without levels");
  }
  if (flags & 0x04) {
    const d = r.u16("detection count");
    r.need(d * 16, "detections");
    h.boxes = [];
    h.scores = [];
    h.classes = [];
    for (let i = 0; i < d; i++, r.pos += 16) {
      const p = r.pos;
      h.boxes.push([
        v.getInt16(p, true) / 100,
        v.getInt16(p + 2, true) / 100,
        v.getInt16(p + 4, true) / 100,
        v.getUint16(p + 6, true) / 100,
        v.getUint16(p + 8, true) / 100,
        v.getUint16(p + 10, true) / 100,
        (v.getInt16(p + 12, true) / 32767) * Math.PI,
      ]);
      h.scores.push(bytes[p + 14] / 255);
      h.classes.push(bytes[p + 15]);
    }
    if (flags & 0x08) {
      r.need(d * 14, "variances");
      h.variances = [];
      for (let i = 0; i < d; i++) {
        const row = [];
        for (let j = 0; j < 7; j++, r.pos += 2) row.push(half(v.getUint16(r.pos, true)));
        h.variances.push(row);
      }
    }
  } else if (type === 4) throw new Error("a detections message without detections");
  if (r.pos !== bytes.length) throw new Error(`${bytes.length - r.pos} bytes left over`);
  return h;
}

function hex32(n) {
  return "0x" + n.toString(16).padStart(8, "0");
}

// feature = max(0, sum over stages of concat over sub-codebooks of codeword[s][t][code[s*m+t]])
function rebuild(book, row) {
  const { r, m, k, d } = book;
  const out = new Array(m * d).fill(0);
  for (let s = 0; s < r; s++) {
    for (let t = 0; t < m; t++) {
      const base = ((s * m + t) * k + row[s * m + t]) * d;
      for (let j = 0; j < d; j++) out[t * d + j] += book.codewords[base + j];
    }
  }
  return out.map((x) => Math.max(0, x));
}

// -- the codebook file ---------------------------------------------------------------------------
function readCodebook(path, cfg) {
  const raw = readFileSync(path);
  const n = Number(raw.readBigUInt64LE(0));
  const header = JSON.parse(raw.subarray(8, 8 + n).toString("utf8"));
  const meta = header.__metadata__;
  const spec = header.codewords;
  const [r, m, k, d] = spec.shape;
  check(meta.format === "v2x-codebook" && meta.format_version === "1", "codebook file format");
  check(spec.dtype === "F32", "codebook dtype");
  check(
    Number(meta.r) === r && Number(meta.m) === m && Number(meta.k) === k && Number(meta.channels) === m * d,
    "codebook metadata shape",
  );
  const data = raw.subarray(8 + n);
  check(spec.data_offsets[0] === 0 && spec.data_offsets[1] === data.length && data.length === 4 * r * m * k * d, "codebook data length");
  const text = `[('channels', ${m * d}), ('k', ${k}), ('m', ${m}), ('r', ${r})]`;
  const digest = createHash("sha256").update(text, "ascii").update(data).digest("hex");
  const identity = "0x" + digest.slice(0, 8);
  check(identity === meta.identity && digest === meta.identity_sha256, `codebook identity ${identity} vs file ${meta.identity}`);
  check(identity === cfg.codebook.identity, `codebook identity ${identity} vs document ${cfg.codebook.identity}`);
  check(Number(meta.bits) === Math.max(1, Math.ceil(Math.log2(k))), "codebook bits");
  const codewords = new Float32Array(r * m * k * d);
  for (let i = 0; i < codewords.length; i++) codewords[i] = data.readFloatLE(4 * i);
  return { r, m, k, d, codewords, identity };
}

// -- the grid fingerprint ------------------------------------------------------------------------
// Python's float repr: the shortest round-trip decimal, with ".0" on whole numbers
function pyFloat(x) {
  const v = Math.round(x * 1e6) / 1e6;
  const s = String(v);
  return Number.isInteger(v) ? s + ".0" : s;
}

function gridFingerprint(grid) {
  const keys = ["stride", "voxel", "x_max", "x_min", "y_max", "y_min", "z_max", "z_min"];
  const text = "{" + keys.map((k) => `"${k}": ${pyFloat(grid[k])}`).join(", ") + "}";
  const digest = createHash("sha256").update(text, "utf8").digest();
  return { text, fingerprint: hex32(digest.readUInt32LE(0)) };
}

// -- msgpack (the subset an envelope uses) -------------------------------------------------------
function unpack(bytes) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let p = 0;
  const str = (n) => {
    const s = Buffer.from(bytes.subarray(p, p + n)).toString("utf8");
    p += n;
    return s;
  };
  const arr = (n) => Array.from({ length: n }, () => item());
  const map = (n) => {
    const o = {};
    for (let i = 0; i < n; i++) {
      const key = item();
      o[key] = item();
    }
    return o;
  };
  const big = (x) => (x <= BigInt(Number.MAX_SAFE_INTEGER) && x >= -BigInt(Number.MAX_SAFE_INTEGER) ? Number(x) : x.toString());
  function item() {
    const b = bytes[p++];
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return b - 256;
    if ((b & 0xf0) === 0x80) return map(b & 0x0f);
    if ((b & 0xf0) === 0x90) return arr(b & 0x0f);
    if ((b & 0xe0) === 0xa0) return str(b & 0x1f);
    const take = (n, f) => {
      const x = f(p);
      p += n;
      return x;
    };
    switch (b) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bytes.slice(p + 1, (p += 1 + bytes[p]));
      case 0xca: return take(4, (q) => v.getFloat32(q));
      case 0xcb: return take(8, (q) => v.getFloat64(q));
      case 0xcc: return take(1, (q) => v.getUint8(q));
      case 0xcd: return take(2, (q) => v.getUint16(q));
      case 0xce: return take(4, (q) => v.getUint32(q));
      case 0xcf: return big(take(8, (q) => v.getBigUint64(q)));
      case 0xd0: return take(1, (q) => v.getInt8(q));
      case 0xd1: return take(2, (q) => v.getInt16(q));
      case 0xd2: return take(4, (q) => v.getInt32(q));
      case 0xd3: return big(take(8, (q) => v.getBigInt64(q)));
      case 0xd9: return str(take(1, (q) => v.getUint8(q)));
      case 0xda: return str(take(2, (q) => v.getUint16(q)));
      case 0xdc: return arr(take(2, (q) => v.getUint16(q)));
      case 0xde: return map(take(2, (q) => v.getUint16(q)));
      default: throw new Error(`msgpack byte 0x${b.toString(16)} not supported`);
    }
  }
  const out = item();
  if (p !== bytes.length) throw new Error("msgpack: bytes left over");
  return out;
}

// -- comparing with the document -----------------------------------------------------------------
function same(got, want, path, tol) {
  if (want !== null && typeof want === "object" && !Array.isArray(want) && "count" in want && Array.isArray(got)) {
    const sum = got.reduce((a, b) => a + b, 0);
    return check(
      got.length === want.count && sum === want.sum && want.first.every((x, i) => got[i] === x),
      `${path}: ${got.length} entries (sum ${sum}), the document says ${JSON.stringify(want)}`,
    );
  }
  if (Array.isArray(want)) {
    if (!check(Array.isArray(got) && got.length === want.length, `${path}: length ${got?.length} vs ${want.length}`)) return false;
    return want.every((w, i) => same(got[i], w, `${path}[${i}]`, tol));
  }
  if (want !== null && typeof want === "object") {
    return Object.keys(want).every((k) => same(got?.[k], want[k], `${path}.${k}`, tol));
  }
  if (typeof want === "number" && typeof got === "number" && !Number.isInteger(want)) {
    return check(Math.abs(got - want) <= tol * Math.max(1, Math.abs(want)), `${path}: ${got} vs ${want}`);
  }
  return check(got === want, `${path}: ${JSON.stringify(got)} vs ${JSON.stringify(want)}`);
}

// -- main ----------------------------------------------------------------------------------------
const [docPath, root = "."] = process.argv.slice(2);
const doc = readFileSync(docPath, "utf8");
const config = parseJson(fencedAfter(doc, "<!-- BEGIN GENERATED CONFIGURATION", "json"));
const g = config.grid;
const W = Math.floor(Math.round((g.x_max - g.x_min) / g.voxel) / g.stride);
const H = Math.floor(Math.round((g.y_max - g.y_min) / g.voxel) / g.stride);
check(H === config.feature_grid.H && W === config.feature_grid.W, `grid ${H} x ${W}`);
const b = config.block_grid.b;
check(Math.ceil(H / b) * Math.ceil(W / b) === config.block_grid.blocks, "block grid size");
const fp = gridFingerprint(g);
check(fp.text === config.grid_text, `fingerprint text ${fp.text}`);
check(fp.fingerprint === config.grid_fingerprint, `fingerprint ${fp.fingerprint} vs ${config.grid_fingerprint}`);
const cfg = { ...config, H, W };
const book = readCodebook(join(root, config.codebook.path), config);
check(book.k === config.codebook.k && book.r * book.m === config.codebook.indices_per_cell, "codebook shape");

const examples = doc.slice(doc.indexOf("<!-- BEGIN GENERATED EXAMPLES"), doc.indexOf("<!-- END GENERATED EXAMPLES"));
const names = [...examples.matchAll(/^Decoded \(`([^`]+)`\):$/gm)].map((x) => x[1]);
check(names.length >= 8, `${names.length} decoded examples`);
const out = { grid_fingerprint: fp.fingerprint, codebook_identity: book.identity, examples: {} };
for (const name of names) {
  const bytes = parseHexdump(fencedAfter(examples, `(\`${name}\`):`, "text"));
  const want = parseJson(fencedAfter(examples, `Decoded (\`${name}\`):`, "json"));
  let got;
  try {
    got = decode(bytes, cfg, book);
  } catch (e) {
    check(false, `${name}: ${e.message}`);
    continue;
  }
  if (want.features && got.codes) want.features.forEach((row, i) => same(got.features[i].slice(0, row.length), row, `${name}.features[${i}]`, 1e-5));
  const { features, ...rest } = want;
  same(got, want.codes ? rest : want, name, 1e-5);
  out.examples[name] = { type: got.type, features: got.codes ? got.features : undefined };
}

// the ZeroMQ example: topic, msgpack envelope, wire message
const parts = [1, 2, 3].map((i) => parseHexdump(fencedAfter(examples, `(\`part-${i}\`):`, "text")));
const topic = Buffer.from(parts[0]).toString("utf8");
check(topic.startsWith("/"), `topic ${topic}`);
const envelope = unpack(parts[1]);
same(envelope, parseJson(fencedAfter(examples, "(`envelope`):", "json")), "envelope", 1e-12);
check(envelope.t === "Packet" && envelope.a[0][1][0] === parts[2].length, "envelope describes part 3");
try {
  const msg = decode(parts[2], cfg, book);
  check(envelope.m.kind === topic.split("/").pop(), "the topic names the packet's kind");
  out.envelope = { topic, kind: envelope.m.kind, type: msg.type };
} catch (e) {
  check(false, `part 3: ${e.message}`);
}

if (failures.length) {
  for (const f of failures) console.error(f);
  process.exit(1);
}
console.log(JSON.stringify(out));
