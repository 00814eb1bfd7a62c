import { expect, spyOn, test } from "bun:test";
import { importOptional, missingMessage } from "../bench/_optional.ts";

test("a missing demo package is reported with the fix, and the demo goes on without it", async () => {
  const error = spyOn(console, "error").mockImplementation(() => {});
  try {
    const missing = "mixprec-no-such-package"; // A variable: the type checker does not look it up.
    const loaded = await importOptional(() => import(missing), ["vega"], "The demo's plot");
    expect(loaded).toBeNull();
    expect(error).toHaveBeenCalledTimes(1);
    const message = String(error.mock.calls[0]![0]);
    expect(message).toContain("The demo's plot needs vega");
    expect(message).toContain("npm ci");
    expect(message).toContain("mixprec-no-such-package");
  } finally {
    error.mockRestore();
  }
});

test("an installed demo package is imported", async () => {
  const loaded = await importOptional(() => import("cli-progress"), ["cli-progress"], "The progress bar");
  expect(typeof loaded?.SingleBar).toBe("function");
  expect(missingMessage(["a", "b"], "X", new Error("gone\nstack"))).toBe(
    "X needs a and b (devDependencies of mixprec; run `npm ci` in the checkout to install them): gone",
  );
});
