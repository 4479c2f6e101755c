#!/usr/bin/env node
// Cross-check: verifies Mux-Signature headers with Mux's official Node SDK (@mux/mux-node),
// an implementation nobody on hookline wrote.
//
// Input: JSON lines on stdin (or one JSON case per argument), each
//   {"body": "<raw body>", "header": "t=...,v1=...", "secret": "...", "expect": "ok"|"fail"}
// (`expect` optional). Output: one JSON line per case, {"case": i, "result": "ok"|"fail",
// "error": "..."}. Exit 0 when every case with `expect` got it, 1 on any disagreement,
// 2 when the SDK is not installed (run tests/crosscheck/setup.sh), 3 on bad input.
'use strict';

const path = require('path');

const sdkDir = path.join(__dirname, '..', '..', 'target', 'crosscheck', 'node', 'node_modules', '@mux', 'mux-node');
let MuxSdk;
try {
  MuxSdk = require(sdkDir);
} catch (e) {
  process.stderr.write(`@mux/mux-node not found under ${sdkDir}: run tests/crosscheck/setup.sh (${e.message})\n`);
  process.exit(2);
}
const Mux = MuxSdk.Mux || MuxSdk.default;
// Token values are irrelevant: signature verification makes no API call.
const mux = new Mux({ tokenId: 'crosscheck', tokenSecret: 'crosscheck' });

async function readCases() {
  if (process.argv.length > 2) return process.argv.slice(2);
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  return input.split('\n').filter((l) => l.trim() !== '');
}

async function main() {
  let lines;
  let cases;
  try {
    lines = await readCases();
    cases = lines.map((l) => JSON.parse(l));
  } catch (e) {
    process.stderr.write(`bad input: ${e.message}\n`);
    process.exit(3);
  }
  let disagreements = 0;
  for (const [i, c] of cases.entries()) {
    let result = 'ok';
    let error;
    try {
      // The SDK's own verifier: parses t= and every v1=, HMAC-SHA256 over `${t}.${body}`,
      // timing-safe compare, rejects timestamps older than 5 minutes.
      await mux.webhooks.verifySignature(c.body, { 'mux-signature': c.header }, c.secret);
    } catch (e) {
      result = 'fail';
      error = e.message;
    }
    if (c.expect !== undefined && c.expect !== result) disagreements += 1;
    process.stdout.write(JSON.stringify({ case: i, result, error, expect: c.expect }) + '\n');
  }
  process.exit(disagreements === 0 ? 0 : 1);
}

main();
