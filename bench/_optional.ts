/**
 * The demo's optional packages (vega and vega-lite for the plot, cli-progress for the progress
 * bar) are devDependencies: `npm ci` in a checkout installs them, an installed mixprec has none.
 * They are imported on first use; without them the demo says what is missing and goes on without
 * the plot or the bar.
 *
 * @module
 */

/** The message shown when an optional demo package is missing. */
export function missingMessage(packages: readonly string[], purpose: string, cause: unknown): string {
  const reason = cause instanceof Error ? cause.message.split("\n")[0] : String(cause);
  return `${purpose} needs ${packages.join(" and ")} (devDependencies of mixprec; run \`npm ci\` in the checkout to install them): ${reason}`;
}

/** Imports the modules, or returns null after printing once what is missing and why. */
export async function importOptional<T>(
  load: () => Promise<T>,
  packages: readonly string[],
  purpose: string,
): Promise<T | null> {
  try {
    return await load();
  } catch (cause) {
    console.error(`${missingMessage(packages, purpose, cause)}; going on without it`);
    return null;
  }
}
