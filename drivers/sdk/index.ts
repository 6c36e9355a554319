/**
 * The Strata driver SDK, public API. Provider authors import from here; the jest conformance kit
 * is the one exception (`drivers/sdk/conformance.js`, test code only).
 */
export * from './base-driver.js';
export * from './checksum.js';
export * from './confine.js';
export * from './errors.js';
export * from './host-config.js';
export * from './host-protocol.js';
export * from './host-runtime.js';
export * from './image-inspect.js';
export * from './logger.js';
export * from './qemu.js';
export * from './registry.js';
export * from './testing.js';
export * from './types.js';
export * from './validation.js';
