/**
 * The local Lambda runtime: one container of one function. The embedded stack forks this file with
 * the function's environment; it loads the bundled handler from the code directory (what
 * `cdk deploy` uploads) and runs one invocation at a time, as a Lambda execution environment does.
 *
 *   argv: <code dir> <handler, e.g. index.handler> [<code cache dir>]
 *   parent → child: { id, event, deadlineMs, requestId }
 *   child → parent: { ready: true, codeCache } once loaded, then
 *                   { id, ok: true, result } | { id, ok: false, errorType, errorMessage, trace }
 *
 * Plain JavaScript on purpose: a container starts in a few hundred milliseconds without a TypeScript
 * loader, and nothing here is compiled differently from what runs on AWS.
 *
 * With a code cache directory the bundle is compiled through V8's code cache (the same bytes, run
 * the same way; only V8's parse and compile are skipped when an earlier container left the cache):
 * a container of a 2 MB bundle is then ready in about half the time (~340 → ~185 ms). The cache is written after
 * the container's first invocation, so it holds the functions that invocation compiled. Compiling
 * outside Node's loader skips Node's source-map registration, so with `--enable-source-maps` this
 * file maps the bundle's stack frames itself, reading the map only when a stack is formatted.
 */
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const Module = require('node:module');
const path = require('node:path');
const vm = require('node:vm');

const [codeDir, handlerSpec, cacheDir] = process.argv.slice(2);
const dot = handlerSpec.lastIndexOf('.');
const file = path.join(codeDir, handlerSpec.slice(0, dot));
const exportName = handlerSpec.slice(dot + 1);

/** The bundle's compiled script when it was loaded through the code cache, to write the cache later. */
let cacheWrite;
/** How the bundle was compiled: `loaded` from the code cache, `compiled` from source (cache to write). */
let codeCache = 'none';

/** Loads a CommonJS file as Node's loader does, through V8's code cache kept under `cacheDir`. */
function requireCached(filename) {
  const source = fs.readFileSync(filename, 'utf8');
  const stat = fs.statSync(filename);
  const key = crypto
    .createHash('sha256')
    .update(`${process.version}\0${process.arch}\0${filename}\0${stat.size}\0${stat.mtimeMs}`)
    .digest('hex')
    .slice(0, 40);
  const cachePath = path.join(cacheDir, `${key}.v8`);
  let cachedData;
  try {
    cachedData = fs.readFileSync(cachePath);
  } catch {
    // no cache yet: this container compiles and writes it
  }
  const script = new vm.Script(Module.wrap(source), { filename, cachedData });
  if (!cachedData || script.cachedDataRejected) cacheWrite = { script, cachePath };
  codeCache = cacheWrite ? 'compiled' : 'loaded';
  const mod = new Module(filename, module);
  mod.filename = filename;
  mod.paths = Module._nodeModulePaths(path.dirname(filename));
  const compiled = script.runInThisContext({ displayErrors: true });
  const localRequire = (id) => mod.require(id);
  localRequire.resolve = (request) => Module._resolveFilename(request, mod);
  compiled.call(mod.exports, mod.exports, localRequire, mod, filename, path.dirname(filename));
  mod.loaded = true;
  if (process.sourceMapsEnabled) mapStackFrames(filename, source);
  return mod.exports;
}

/** Writes the code cache once (after the first invocation), atomically; a failure only costs speed. */
function writeCodeCache() {
  const pending = cacheWrite;
  cacheWrite = undefined;
  if (!pending) return;
  try {
    fs.mkdirSync(cacheDir, { recursive: true });
    const tmp = `${pending.cachePath}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, pending.script.createCachedData());
    fs.renameSync(tmp, pending.cachePath);
  } catch {
    // a read-only or full disk: the next container compiles again
  }
}

/**
 * Stack frames in the bundle, mapped to the sources as `--enable-source-maps` does for files Node's
 * loader compiled. The map is read at the first stack that names the bundle.
 */
function mapStackFrames(filename, source) {
  const match = /\/\/# sourceMappingURL=(\S+)\s*$/.exec(source.slice(-512));
  if (!match || match[1].startsWith('data:')) return;
  const mapFile = path.resolve(path.dirname(filename), match[1]);
  const wrapperColumns = Module.wrap('').indexOf('{') + 2;
  let sourceMap;
  Error.prepareStackTrace = (error, frames) => {
    const lines = frames.map((frame, i) => {
      const text = `    at ${frame}`;
      if (frame.getFileName() !== filename) return text;
      if (sourceMap === undefined) {
        try {
          sourceMap = new Module.SourceMap(JSON.parse(fs.readFileSync(mapFile, 'utf8')));
        } catch {
          sourceMap = null;
        }
      }
      if (!sourceMap) return text;
      const at = (line, column) =>
        sourceMap.findEntry(line - 1, column - 1 - (line === 1 ? wrapperColumns : 0));
      const entry = at(frame.getLineNumber(), frame.getColumnNumber());
      if (!entry?.originalSource) return text;
      const source = entry.originalSource.startsWith('file://')
        ? new URL(entry.originalSource).pathname
        : path.resolve(path.dirname(mapFile), entry.originalSource);
      const where = `${source}:${entry.originalLine + 1}:${entry.originalColumn + 1}`;
      // Named as Node names a mapped frame: the original name at the enclosing function's start,
      // else the name its caller (in the bundle too) called it by.
      const caller = frames[i + 1];
      const name =
        at(frame.getEnclosingLineNumber(), frame.getEnclosingColumnNumber()).name ??
        (caller?.getFileName() === filename
          ? at(caller.getLineNumber(), caller.getColumnNumber()).name
          : undefined) ??
        frame.getFunctionName();
      const prefix = frame.isAsync?.() ? 'async ' : '';
      return name ? `    at ${prefix}${name} (${where})` : `    at ${prefix}${where}`;
    });
    return [String(error), ...lines].join('\n');
  };
}

let handler;
let initError;
try {
  // Node's own resolution (`index` → `index.js`); JSON or native handlers load as usual.
  const resolved = cacheDir ? require.resolve(file) : undefined;
  const cacheable = resolved !== undefined && /\.c?js$/.test(resolved);
  handler = (cacheable ? requireCached(resolved) : require(file))[exportName];
  if (typeof handler !== 'function') throw new Error(`${handlerSpec} is not a function in ${codeDir}`);
} catch (e) {
  initError = e;
}

function failure(id, error) {
  const isError = error instanceof Error;
  return {
    id,
    ok: false,
    errorType: isError ? error.name || 'Error' : typeof error,
    errorMessage: isError ? error.message : String(error),
    trace: isError && error.stack ? String(error.stack).split('\n') : [],
  };
}

process.on('message', async (message) => {
  const { id, event, deadlineMs, requestId } = message;
  if (initError) {
    process.send({ ...failure(id, initError), errorType: 'Runtime.ImportModuleError' });
    return;
  }
  const context = {
    callbackWaitsForEmptyEventLoop: false,
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
    invokedFunctionArn: process.env.STRATA_LOCAL_FUNCTION_ARN,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    awsRequestId: requestId,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    getRemainingTimeInMillis: () => Math.max(0, deadlineMs - Date.now()),
    done() {},
    fail() {},
    succeed() {},
  };
  try {
    const result = await handler(event, context);
    process.send({ id, ok: true, result: result === undefined ? null : result });
  } catch (error) {
    process.send(failure(id, error));
  }
  writeCodeCache();
});

process.on('disconnect', () => process.exit(0));
process.send({ ready: true, codeCache });
