import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The package root: the nearest folder above this file holding package.json (works from src/ under vitest and from dist/). */
export const PACKAGE_ROOT: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`natlens: cannot find package.json above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
})();

/** Where the build puts the precompiled BPF object and the native CLIs. */
export const NATIVE_DIR = join(PACKAGE_ROOT, 'dist', 'native');
export const PROBE_BIN = join(NATIVE_DIR, 'natlens-probe');
export const BPF_OBJECT = join(NATIVE_DIR, 'natlens.bpf.o');
export const LOAD_BIN = join(NATIVE_DIR, 'natlens-load');

/** This release, from package.json (agents announce it to collectors). */
export const NATLENS_VERSION: string = (JSON.parse(readFileSync(join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
