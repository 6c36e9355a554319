export { type NfsDetails, NfsDetailsSchema } from './details.js';
export {
  assertHttpUrl,
  ChecksumMismatchError,
  type DownloadOptions,
  type DownloadResult,
  downloadToFile,
  sha256OfFile,
} from './download.js';
export { NfsDriver, type NfsProviderOptions, nfsDetails, nfsObjectPath, qemuFormatOf } from './driver.js';
export {
  NfsHostOperation,
  type NfsImageFormat,
  NfsImageFormatSchema,
  type NfsImageResult,
  type NfsListedFile,
  type NfsSourceFormat,
  NfsSourceFormatSchema,
  nfsHostOperations,
} from './host-ops.js';
export { NfsLifeCycle } from './lifecycle.js';
export { createNfsProvider } from './provider.js';
export {
  createNfsTemplateInstallStrategy,
  NFS_TEMPLATE_INSTALL_STRATEGY,
  type NfsTemplateInstallOptions,
  nfsTemplateCachePath,
} from './template-install.js';
