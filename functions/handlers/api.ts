/** Lambda entry: the REST API behind API Gateway. */
import { createJsonLogger } from '../../drivers/sdk/logger.js';
import { createApiHandler } from './api/handler.js';
import { awsStrata } from './aws-runtime.js';

export const handler = createApiHandler({ getStrata: awsStrata, logger: createJsonLogger() });
