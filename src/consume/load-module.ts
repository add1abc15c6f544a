import { pathToFileURL } from 'node:url';

let tsLoaderRegistered: Promise<void> | undefined;

/** Registers tsx's ESM loader once, so `.ts`/`.mts` consumer and config files can be imported. */
function registerTypeScriptLoader(): Promise<void> {
  tsLoaderRegistered ??= import('tsx/esm/api').then(({ register }) => {
    register();
  });
  return tsLoaderRegistered;
}

/** Imports a user file (`.js`, `.mjs`, `.ts`, `.mts`) by absolute path and returns its module. */
export async function importUserFile(absolutePath: string): Promise<Record<string, unknown>> {
  if (/\.m?ts$/.test(absolutePath)) await registerTypeScriptLoader();
  return (await import(pathToFileURL(absolutePath).href)) as Record<string, unknown>;
}
