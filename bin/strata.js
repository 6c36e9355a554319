#!/usr/bin/env node
// Launcher for the strata CLI from a checkout: runs the TypeScript sources through tsx.
const path = require('node:path');
const { register } = require('tsx/cjs/api');

register();
require(path.join(__dirname, '..', 'cli', 'main.ts')).main();
