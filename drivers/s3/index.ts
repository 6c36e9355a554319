export {
  defaultS3ClientFactory,
  mapS3Error,
  resolveS3Client,
  S3_CLIENT_SERVICE,
  type S3ClientFactory,
  s3Details,
  s3ObjectPath,
} from './client.js';
export { isValidBucketName, normalizePrefix, type S3Details, S3DetailsSchema } from './details.js';
export { S3_SINGLE_COPY_LIMIT, S3Driver, type S3ProviderOptions } from './driver.js';
export { S3LifeCycle } from './lifecycle.js';
export {
  assertObjectSize,
  assertUploadId,
  multipartEtag,
  partSizeFor,
  planParts,
  planStreamUpload,
  S3_LIMITS,
  uploadPartSize,
  validateCompletedParts,
} from './multipart.js';
export { createS3Provider } from './provider.js';
