/** Lambda entry: every step of the store-attach and store-maintenance workflows. */
import { awsStrata } from './aws-runtime.js';
import { createStoreTasksHandler } from './store-tasks-handler.js';

export const handler = createStoreTasksHandler(awsStrata);
