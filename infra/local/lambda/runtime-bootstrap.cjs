/**
 * The local Lambda runtime: one container of one function. The embedded stack forks this file with
 * the function's environment; it loads the bundled handler from the code directory (what
 * `cdk deploy` uploads) and runs one invocation at a time, as a Lambda execution environment does.
 *
 *   argv: <code dir> <handler, e.g. index.handler>
 *   parent → child: { id, event, deadlineMs, requestId }
 *   child → parent: { id, ok: true, result } | { id, ok: false, errorType, errorMessage, trace }
 *
 * Plain JavaScript on purpose: a container starts in a few hundred milliseconds without a TypeScript
 * loader, and nothing here is compiled differently from what runs on AWS.
 */
'use strict';
const path = require('node:path');

const [codeDir, handlerSpec] = process.argv.slice(2);
const dot = handlerSpec.lastIndexOf('.');
const file = path.join(codeDir, handlerSpec.slice(0, dot));
const exportName = handlerSpec.slice(dot + 1);

let handler;
let initError;
try {
  handler = require(file)[exportName];
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
});

process.on('disconnect', () => process.exit(0));
process.send({ ready: true });
