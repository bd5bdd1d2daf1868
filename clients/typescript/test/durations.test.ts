/** The one duration rule: a bare number is seconds; strings are words, ms or ISO-8601. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { parseDelay, parseDuration } from "../src/index";

describe("durations", () => {
  test("a bare number is seconds, as in the Python client", () => {
    assert.equal(parseDuration(5, "delay"), 5);
    assert.equal(parseDuration(0.25, "delay"), 0.25);
    assert.equal(parseDuration("90", "delay"), 90);
  });

  test("words, milliseconds and ISO-8601 durations", () => {
    const cases: [string, number][] = [
      ["5m", 300],
      ["1 day", 86_400],
      ["2 weeks", 14 * 86_400],
      ["1h30m", 5400],
      ["2 days 4 hours", 2 * 86_400 + 4 * 3600],
      ["500ms", 0.5],
      ["1.5h", 5400],
      ["PT5M", 300],
      ["pt1h30m", 5400],
      ["P1DT2H", 86_400 + 7200],
      ["P2W", 14 * 86_400],
    ];
    for (const [text, seconds] of cases) assert.equal(parseDuration(text, "delay"), seconds, text);
  });

  test("a delay may be an absolute time", () => {
    const when = new Date("2031-02-03T04:05:06Z");
    assert.equal(parseDelay(when), when);
    assert.deepEqual(parseDelay("2031-02-03T04:05:06Z"), when);
    assert.equal(parseDelay("5m"), 300);
  });

  test("out of range or unreadable values name the parameter, the unit and the range", () => {
    assert.throws(() => parseDelay(-1), /delay must be between 0 s and 366 days; got -1 s/);
    assert.throws(() => parseDelay("2 years"), /delay must be between 0 s and 366 days/);
    assert.throws(() => parseDuration("soon", "ackDeadline"), /ackDeadline: cannot read "soon" as a length of time/);
    assert.throws(() => parseDuration(Infinity, "timeout"), /timeout must be a finite number of seconds/);
    assert.throws(
      () => parseDuration(0.5, "ackDeadline", { minimumS: 1, maximumS: 12 * 3600 }),
      /ackDeadline must be between 1 s and 12 h; got 0.5 s/,
    );
  });
});
