/**
 * The URL and address policy behind "register template from URL": which URLs an operator may hand us
 * and which addresses we may connect to. Pure (no DNS, no sockets) so the API can refuse what is known
 * up front with a 4xx, and the fetcher (`functions/adapters/http/safe-fetch.ts`) applies the same rules
 * to every resolved address and every redirect.
 *
 * Refused unless the operator's allowlist (`STRATA_FETCH_ALLOWLIST`) names them:
 *
 * IPv4 (RFC 6890 special-purpose registry, plus cloud metadata endpoints):
 * - `0.0.0.0/8` this network; `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` private;
 *   `100.64.0.0/10` shared/carrier-grade NAT (also Alibaba's metadata at 100.100.100.200);
 *   `127.0.0.0/8` loopback; `169.254.0.0/16` link-local, including `169.254.169.254` (EC2/GCP/Azure/OCI
 *   metadata), `169.254.170.2` (ECS task credentials) and `169.254.170.23` (EKS pod identity);
 *   `168.63.129.16/32` (Azure platform endpoint); `192.0.0.0/24` IETF protocol assignments;
 *   `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24` documentation; `192.88.99.0/24` 6to4 relay;
 *   `198.18.0.0/15` benchmarking; `224.0.0.0/4` multicast; `240.0.0.0/4` reserved;
 *   `255.255.255.255/32` broadcast.
 *
 * IPv6 (RFC 6890/IANA registry):
 * - `::/128` unspecified; `::1/128` loopback; `::/96` IPv4-compatible (deprecated);
 *   `::ffff:0:0/96` IPv4-mapped, `64:ff9b::/96` NAT64 and `2002::/16` 6to4 are judged by the IPv4
 *   address they embed; `64:ff9b:1::/48` local-use NAT64; `100::/64` discard-only;
 *   `2001::/23` IETF protocol assignments (includes Teredo `2001::/32`, refused whole);
 *   `2001:db8::/32` and `3fff::/20` documentation; `fd00:ec2::254` (EC2 metadata over IPv6) inside
 *   `fc00::/7` unique local; `fe80::/10` link-local; `ff00::/8` multicast;
 *   and anything outside `2000::/3`, the only block IANA allocates as global unicast.
 *
 * Host names `localhost` and `*.localhost` (RFC 6761) are refused up front; every other name is judged
 * by the addresses it resolves to, which is the fetcher's job.
 */

import { isIP, isIPv4, isIPv6 } from 'node:net';
import { InputError } from './errors.js';

/** The parsed `STRATA_FETCH_ALLOWLIST`: exact host names and address ranges the operator trusts. */
export interface FetchAllowlist {
  /** Lower-case host names without a trailing dot, matched exactly. */
  readonly hosts: ReadonlySet<string>;
  /** Address ranges, written back in CIDR form. */
  readonly ranges: readonly CidrRange[];
}

/** One address range of an allowlist. */
export interface CidrRange {
  readonly family: 4 | 6;
  readonly text: string;
  readonly base: bigint;
  readonly prefix: number;
}

/** The name of the operator setting, quoted in refusals so the operator knows where to look. */
export const FETCH_ALLOWLIST_ENV = 'STRATA_FETCH_ALLOWLIST';

/** Longer URLs are refused up front: no image store needs them and they bloat logs and job records. */
export const MAX_URL_LENGTH = 8192;

const EMPTY: FetchAllowlist = { hosts: new Set(), ranges: [] };

interface BlockedRange {
  readonly cidr: string;
  readonly reason: string;
  /** For IPv6 ranges that carry an IPv4 address: where it sits, so the IPv4 address is judged instead. */
  readonly embedsV4?: (address: bigint) => bigint;
}

// Most specific first: the first match names the reason.
const BLOCKED_V4: readonly BlockedRange[] = [
  { cidr: '169.254.169.254/32', reason: 'the cloud metadata address' },
  { cidr: '169.254.170.2/32', reason: 'the ECS task metadata address' },
  { cidr: '169.254.170.23/32', reason: 'the EKS pod identity address' },
  { cidr: '168.63.129.16/32', reason: 'the Azure platform endpoint' },
  { cidr: '255.255.255.255/32', reason: 'the broadcast address' },
  { cidr: '0.0.0.0/8', reason: 'a "this network" address' },
  { cidr: '10.0.0.0/8', reason: 'a private address' },
  { cidr: '100.64.0.0/10', reason: 'a shared (carrier-grade NAT) address' },
  { cidr: '127.0.0.0/8', reason: 'a loopback address' },
  { cidr: '169.254.0.0/16', reason: 'a link-local address' },
  { cidr: '172.16.0.0/12', reason: 'a private address' },
  { cidr: '192.0.0.0/24', reason: 'an IETF protocol assignment address' },
  { cidr: '192.0.2.0/24', reason: 'a documentation address' },
  { cidr: '192.88.99.0/24', reason: 'a 6to4 relay anycast address' },
  { cidr: '192.168.0.0/16', reason: 'a private address' },
  { cidr: '198.18.0.0/15', reason: 'a benchmarking address' },
  { cidr: '198.51.100.0/24', reason: 'a documentation address' },
  { cidr: '203.0.113.0/24', reason: 'a documentation address' },
  { cidr: '224.0.0.0/4', reason: 'a multicast address' },
  { cidr: '240.0.0.0/4', reason: 'a reserved address' },
];

const LOW_32 = 0xffff_ffffn;

const BLOCKED_V6: readonly BlockedRange[] = [
  { cidr: '::/128', reason: 'the unspecified address' },
  { cidr: '::1/128', reason: 'a loopback address' },
  { cidr: '::ffff:0:0/96', reason: 'an IPv4-mapped address', embedsV4: (a) => a & LOW_32 },
  { cidr: '::/96', reason: 'a deprecated IPv4-compatible address' },
  { cidr: '64:ff9b::/96', reason: 'a NAT64 address', embedsV4: (a) => a & LOW_32 },
  { cidr: '64:ff9b:1::/48', reason: 'a local-use NAT64 address' },
  { cidr: '100::/64', reason: 'a discard-only address' },
  { cidr: '2001:db8::/32', reason: 'a documentation address' },
  { cidr: '2001::/23', reason: 'an IETF protocol assignment address (Teredo and others)' },
  { cidr: '2002::/16', reason: 'a 6to4 address', embedsV4: (a) => (a >> 80n) & LOW_32 },
  { cidr: '3fff::/20', reason: 'a documentation address' },
  { cidr: 'fd00:ec2::254/128', reason: 'the cloud metadata address' },
  { cidr: 'fc00::/7', reason: 'a unique local (private) address' },
  { cidr: 'fe80::/10', reason: 'a link-local address' },
  { cidr: 'ff00::/8', reason: 'a multicast address' },
];

const GLOBAL_UNICAST_V6 = '2000::/3';

/**
 * Parses `STRATA_FETCH_ALLOWLIST`: comma-separated host names (matched exactly, case-insensitively)
 * and address ranges (`10.0.0.0/8`, `fd00::/8`; a bare address means just that address).
 * Blank entries are ignored; anything else that is neither throws, naming the entry.
 *
 * @example
 * const allowlist = parseAllowlist(process.env.STRATA_FETCH_ALLOWLIST);
 * // 'images.internal.example, 10.20.0.0/16, 127.0.0.1'
 */
export function parseAllowlist(text: string | undefined): FetchAllowlist {
  if (!text?.trim()) return EMPTY;
  const hosts = new Set<string>();
  const ranges: CidrRange[] = [];
  for (const raw of text.split(',')) {
    const entry = raw.trim();
    if (!entry) continue;
    const range = tryParseCidr(entry);
    if (range) {
      ranges.push(range);
      continue;
    }
    hosts.add(parseHostEntry(entry));
  }
  return { hosts, ranges };
}

/**
 * The checks that need no network: the URL parses, is http or https, carries no credentials, has a
 * host, is not absurdly long, and, when the host is an IP literal in any spelling the WHATWG parser
 * accepts (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`, `[::ffff:127.0.0.1]`…), that address is not
 * refused. Names are judged later by what they resolve to, except `localhost`.
 *
 * @returns the parsed URL (WHATWG-normalized).
 * @throws InputError with `{ field: 'url' }` naming the reason.
 * @example
 * const url = checkUrlUpFront('https://images.example.com/centos.qcow2', allowlist);
 */
export function checkUrlUpFront(url: string, allowlist: FetchAllowlist): URL {
  if (typeof url !== 'string' || url.length === 0) throw urlError('url is empty');
  if (url.length > MAX_URL_LENGTH) throw urlError(`url is longer than ${MAX_URL_LENGTH} characters`);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw urlError('url is not a valid absolute URL');
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw urlError(`url must use http or https, not ${parsed.protocol.replace(/:$/, '')}`);
  }
  // Credentials would end up in job records and logs, and `user@host` tricks readers about the host.
  if (parsed.username || parsed.password) {
    throw urlError('url must not contain credentials (user:password@)');
  }
  const host = hostOf(parsed);
  if (!host) throw urlError('url has no host');
  if (isIP(host)) {
    const verdict = isBlockedAddress(host, allowlist);
    if (verdict.blocked) {
      throw urlError(
        `url points at ${host}, ${verdict.reason}; add it to ${FETCH_ALLOWLIST_ENV} to allow it`,
        host,
      );
    }
    return parsed;
  }
  if (isLocalhostName(host) && !isAllowlistedHost(host, allowlist)) {
    throw urlError(`url host ${host} is a loopback name; add it to ${FETCH_ALLOWLIST_ENV} to allow it`, host);
  }
  return parsed;
}

/**
 * Whether we may connect to this address. Allowlisted ranges win; otherwise the special-purpose
 * ranges listed at the top of this module are refused. IPv4-mapped IPv6 addresses are judged as the
 * IPv4 address they carry (allowlist included), NAT64 and 6to4 addresses by their embedded IPv4 too.
 *
 * @param ip an IPv4 or IPv6 address (brackets and an IPv6 zone are tolerated); anything else is blocked.
 * @example
 * isBlockedAddress('169.254.169.254', allowlist); // { blocked: true, reason: 'the cloud metadata address' }
 */
export function isBlockedAddress(
  ip: string,
  allowlist: FetchAllowlist,
): { blocked: boolean; reason?: string } {
  const parsed = parseAddress(ip);
  if (!parsed) return { blocked: true, reason: 'not an IP address' };
  let { family, value } = parsed;
  if (family === 6 && inRange(value, 6, V6_MAPPED)) {
    family = 4;
    value &= LOW_32;
  }
  if (allowlist.ranges.some((r) => r.family === family && inRange(value, family, r)))
    return { blocked: false };
  if (family === 4) {
    const hit = BLOCKED_V4_RANGES.find((r) => inRange(value, 4, r.range));
    return hit ? { blocked: true, reason: hit.reason } : { blocked: false };
  }
  const hit = BLOCKED_V6_RANGES.find((r) => inRange(value, 6, r.range));
  if (hit?.embedsV4) {
    const v4 = hit.embedsV4(value);
    const inner = BLOCKED_V4_RANGES.find((r) => inRange(v4, 4, r.range));
    return inner
      ? { blocked: true, reason: `${hit.reason} embedding ${formatV4(v4)}, ${inner.reason}` }
      : { blocked: false };
  }
  if (hit) return { blocked: true, reason: hit.reason };
  if (!inRange(value, 6, GLOBAL_V6))
    return { blocked: true, reason: 'a reserved address (not global unicast)' };
  return { blocked: false };
}

/** Whether the operator's allowlist names this host exactly (case and a trailing dot ignored). */
export function isAllowlistedHost(host: string, allowlist: FetchAllowlist): boolean {
  return allowlist.hosts.has(normalizeName(host));
}

/** The URL's host without IPv6 brackets: what we resolve and what certificates are checked against. */
export function hostOf(url: URL): string {
  const h = url.hostname;
  return h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
}

function urlError(message: string, host?: string): InputError {
  return new InputError(message, host ? { field: 'url', host } : { field: 'url' });
}

function isLocalhostName(host: string): boolean {
  const name = normalizeName(host);
  return name === 'localhost' || name.endsWith('.localhost');
}

function normalizeName(host: string): string {
  return host.toLowerCase().replace(/\.$/, '');
}

const HOST_NAME =
  /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

function parseHostEntry(entry: string): string {
  const invalid = () =>
    new Error(`${FETCH_ALLOWLIST_ENV} entry '${entry}' is neither a host name nor an address range (CIDR)`);
  if (/[/:@?#[\]\s\\%]/.test(entry)) throw invalid();
  let hostname: string;
  try {
    // The same normalization URLs get (IDN to punycode, lower case), so entries match what we compare.
    hostname = new URL(`http://${entry}/`).hostname;
  } catch {
    throw invalid();
  }
  if (isIPv4(hostname)) {
    // `0x7f.1` or `2130706433`: legal in URLs, but an operator should write what they mean.
    throw new Error(`${FETCH_ALLOWLIST_ENV} entry '${entry}' must be written as a dotted-decimal address`);
  }
  const name = normalizeName(hostname);
  if (!HOST_NAME.test(name)) throw invalid();
  return name;
}

function tryParseCidr(entry: string): CidrRange | undefined {
  const slash = entry.indexOf('/');
  const addressText = (slash < 0 ? entry : entry.slice(0, slash)).replace(/^\[(.*)\]$/, '$1');
  const family = isIP(addressText);
  if (family === 0) {
    if (slash >= 0) {
      throw new Error(
        `${FETCH_ALLOWLIST_ENV} entry '${entry}' is neither a host name nor an address range (CIDR)`,
      );
    }
    return undefined;
  }
  const bits = family === 4 ? 32 : 128;
  let prefix = bits;
  if (slash >= 0) {
    const prefixText = entry.slice(slash + 1);
    prefix = /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : Number.NaN;
    if (!(prefix >= 0 && prefix <= bits)) {
      throw new Error(`${FETCH_ALLOWLIST_ENV} entry '${entry}' has a prefix length outside 0-${bits}`);
    }
  }
  const parsed = parseAddress(addressText)!;
  // Host bits are dropped: `10.1.2.3/8` means 10.0.0.0/8, as routers read it.
  const base = parsed.value & mask(prefix, bits);
  return { family: parsed.family, base, prefix, text: `${addressText}/${prefix}` };
}

function cidr(text: string): CidrRange {
  const range = tryParseCidr(text);
  if (!range) throw new Error(`bad built-in range ${text}`);
  return range;
}

const BLOCKED_V4_RANGES = BLOCKED_V4.map((r) => ({ ...r, range: cidr(r.cidr) }));
const BLOCKED_V6_RANGES = BLOCKED_V6.map((r) => ({ ...r, range: cidr(r.cidr) }));
const V6_MAPPED = cidr('::ffff:0:0/96');
const GLOBAL_V6 = cidr(GLOBAL_UNICAST_V6);

function mask(prefix: number, bits: number): bigint {
  const all = (1n << BigInt(bits)) - 1n;
  return prefix === 0 ? 0n : (all << BigInt(bits - prefix)) & all;
}

function inRange(value: bigint, family: 4 | 6, range: CidrRange): boolean {
  if (range.family !== family) return false;
  const bits = family === 4 ? 32 : 128;
  return (value & mask(range.prefix, bits)) === range.base;
}

function parseAddress(ip: string): { family: 4 | 6; value: bigint } | undefined {
  let text = ip.trim().replace(/^\[(.*)\]$/, '$1');
  if (isIPv4(text)) return { family: 4, value: parseV4(text) };
  // A zone (`fe80::1%eth0`) says which interface, not which address.
  text = text.replace(/%.*$/, '');
  if (isIPv6(text)) return { family: 6, value: parseV6(text) };
  return undefined;
}

function parseV4(text: string): bigint {
  return text.split('.').reduce((acc, part) => (acc << 8n) | BigInt(Number(part)), 0n);
}

function parseV6(text: string): bigint {
  let body = text;
  const tail: number[] = [];
  // A trailing dotted quad (`::ffff:1.2.3.4`) stands for the last two groups.
  const quad = /(\d+\.\d+\.\d+\.\d+)$/.exec(body)?.[1];
  if (quad) {
    const v4 = Number(parseV4(quad));
    tail.push(v4 >>> 16, v4 & 0xffff);
    body = body.slice(0, -quad.length);
    if (body.endsWith(':') && !body.endsWith('::')) body = body.slice(0, -1);
  }
  const hex = (s: string) => (s ? s.split(':').map((g) => Number.parseInt(g, 16)) : []);
  const [left = '', right] = body.split('::');
  const head = hex(left);
  const back = [...hex(right ?? ''), ...tail];
  const zeros = right === undefined ? [] : Array<number>(8 - head.length - back.length).fill(0);
  return [...head, ...zeros, ...back].reduce((acc, g) => (acc << 16n) | BigInt(g), 0n);
}

function formatV4(value: bigint): string {
  const n = Number(value);
  return [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff].join('.');
}
