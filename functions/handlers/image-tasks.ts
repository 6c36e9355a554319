/** Lambda entry: every step of the template-ingest and template-copy workflows. */
import { awsStrata } from './aws-runtime.js';
import { createImageTasksHandler } from './image-tasks-handler.js';

export const handler = createImageTasksHandler(awsStrata);
