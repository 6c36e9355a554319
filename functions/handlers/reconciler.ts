/** Lambda entry: the scheduled reconciler. */
import { awsStrata } from './aws-runtime.js';
import { createReconcilerHandler } from './reconciler-handler.js';

export const handler = createReconcilerHandler(awsStrata);
