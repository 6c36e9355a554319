export { type NfsDetails, NfsDetailsSchema } from './details.js';
export { NfsDriver, type NfsProviderOptions, nfsDetails, nfsObjectPath, qemuFormatOf } from './driver.js';
export {
  NfsHostOperation,
  type NfsImageFormat,
  NfsImageFormatSchema,
  type NfsImageResult,
  type NfsListedFile,
  nfsHostOperations,
} from './host-ops.js';
export { NfsLifeCycle } from './lifecycle.js';
export { createNfsProvider } from './provider.js';
