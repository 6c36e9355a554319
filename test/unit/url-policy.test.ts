import { InputError } from '../../functions/core/errors.js';
import { checkUrlUpFront, isBlockedAddress, parseAllowlist } from '../../functions/core/url-policy.js';

const none = parseAllowlist(undefined);

function refusal(url: string, allowlist = none): InputError {
  try {
    checkUrlUpFront(url, allowlist);
  } catch (e) {
    if (e instanceof InputError) return e;
    throw e;
  }
  throw new Error(`${url} was accepted`);
}

describe('parseAllowlist', () => {
  it('is empty for an unset or blank setting', () => {
    for (const text of [undefined, '', '  ', ' , ,']) {
      const list = parseAllowlist(text);
      expect(list.hosts.size).toBe(0);
      expect(list.ranges).toHaveLength(0);
    }
  });

  it('reads host names (lower-cased, trailing dot dropped) and ranges of both families', () => {
    const list = parseAllowlist(
      ' Images.Example. , mirror.example.com,10.1.2.3/8, 127.0.0.1, [::1], fd00::/8 ',
    );
    expect([...list.hosts]).toEqual(['images.example', 'mirror.example.com']);
    expect(list.ranges.map((r) => r.text)).toEqual(['10.1.2.3/8', '127.0.0.1/32', '::1/128', 'fd00::/8']);
  });

  it('stores international names the way URLs spell them', () => {
    expect([...parseAllowlist('bücher.example').hosts]).toEqual(['xn--bcher-kva.example']);
  });

  it.each([
    ['10.0.0.0/33', /prefix length outside 0-32/],
    ['::1/129', /prefix length outside 0-128/],
    ['10.0.0.0/x', /prefix length/],
    ['10.0.0.0/8/1', /prefix length/],
    ['999.0.0.0/8', /neither a host name nor an address range/],
    ['http://images.example', /neither a host name nor an address range/],
    ['images.example/path', /neither a host name/],
    ['user@images.example', /neither a host name/],
    ['exa mple.com', /neither a host name/],
    ['*.example.com', /neither a host name/],
    ['0x7f.1', /dotted-decimal/],
    ['2130706433', /dotted-decimal/],
  ])('refuses %s with a message naming it', (entry, message) => {
    expect(() => parseAllowlist(`ok.example,${entry}`)).toThrow(message);
    expect(() => parseAllowlist(entry)).toThrow(entry);
  });
});

describe('isBlockedAddress', () => {
  it.each([
    ['0.0.0.0', 'this network'],
    ['0.255.1.2', 'this network'],
    ['10.0.0.1', 'private'],
    ['100.64.0.1', 'carrier-grade NAT'],
    ['100.100.100.200', 'carrier-grade NAT'],
    ['127.0.0.1', 'loopback'],
    ['127.255.255.254', 'loopback'],
    ['169.254.169.254', 'cloud metadata'],
    ['169.254.170.2', 'ECS task metadata'],
    ['169.254.170.23', 'EKS pod identity'],
    ['169.254.1.1', 'link-local'],
    ['168.63.129.16', 'Azure'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.0.0.8', 'IETF protocol assignment'],
    ['192.0.2.1', 'documentation'],
    ['192.88.99.1', '6to4 relay'],
    ['192.168.1.1', 'private'],
    ['198.18.0.1', 'benchmarking'],
    ['198.19.255.255', 'benchmarking'],
    ['198.51.100.1', 'documentation'],
    ['203.0.113.1', 'documentation'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['240.0.0.1', 'reserved'],
    ['255.255.255.255', 'broadcast'],
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['0:0:0:0:0:0:0:1', 'loopback'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:a9fe:a9fe', 'cloud metadata'],
    ['::127.0.0.1', 'IPv4-compatible'],
    ['64:ff9b::127.0.0.1', 'NAT64 address embedding 127.0.0.1, a loopback'],
    ['64:ff9b::a9fe:a9fe', 'embedding 169.254.169.254, the cloud metadata'],
    ['64:ff9b:1::1', 'local-use NAT64'],
    ['100::1', 'discard-only'],
    ['2001:0:4136:e378:8000:63bf:3fff:fdd2', 'Teredo'],
    ['2001:1::1', 'IETF protocol assignment'],
    ['2001:db8::1', 'documentation'],
    ['2002:7f00:1::', '6to4 address embedding 127.0.0.1'],
    ['2002:c0a8:101::1', 'embedding 192.168.1.1, a private'],
    ['3fff::1', 'documentation'],
    ['fd00:ec2::254', 'cloud metadata'],
    ['fd12:3456::1', 'unique local'],
    ['fc00::1', 'unique local'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['ff02::1', 'multicast'],
    ['fec0::1', 'not global unicast'],
    ['5f00::1', 'not global unicast'],
    ['not-an-ip', 'not an IP address'],
    ['1.2.3', 'not an IP address'],
  ])('refuses %s (%s)', (ip, reason) => {
    const verdict = isBlockedAddress(ip, none);
    expect(verdict.blocked).toBe(true);
    expect(verdict.reason).toContain(reason);
  });

  it.each([
    '8.8.8.8',
    '1.1.1.1',
    '100.63.255.255',
    '100.128.0.0',
    '172.15.255.255',
    '172.32.0.0',
    '192.0.1.1',
    '198.17.255.255',
    '198.20.0.0',
    '223.255.255.255',
    '2606:4700::1111',
    '[2a00:1450:4001:82b::200e]',
    '::ffff:8.8.8.8',
    '64:ff9b::808:808',
    '2002:808:808::1',
  ])('allows the public address %s', (ip) => {
    expect(isBlockedAddress(ip, none)).toEqual({ blocked: false });
  });

  it('lets allowlisted ranges through, and only those', () => {
    const list = parseAllowlist('10.20.0.0/16, 127.0.0.1, fd00:ec2::/32');
    expect(isBlockedAddress('10.20.5.5', list).blocked).toBe(false);
    expect(isBlockedAddress('10.21.5.5', list).blocked).toBe(true);
    expect(isBlockedAddress('127.0.0.1', list).blocked).toBe(false);
    expect(isBlockedAddress('127.0.0.2', list).blocked).toBe(true);
    // An IPv4-mapped address is the IPv4 address, allowlist included.
    expect(isBlockedAddress('::ffff:127.0.0.1', list).blocked).toBe(false);
    expect(isBlockedAddress('fd00:ec2::254', list).blocked).toBe(false);
    expect(isBlockedAddress('::1', list).blocked).toBe(true);
  });
});

describe('checkUrlUpFront', () => {
  it.each([
    'https://images.example.com/centos-9.qcow2',
    'http://images.example.com:8080/a/b?c=d',
    'HTTP://Images.Example.com/x',
    'http://8.8.8.8/x',
    'http://[2606:4700::1111]/x',
    'http://[::ffff:8.8.8.8]/x',
    'http://@images.example.com/x',
  ])('accepts %s', (url) => {
    expect(checkUrlUpFront(url, none)).toBeInstanceOf(URL);
  });

  it('returns the normalized URL', () => {
    expect(checkUrlUpFront('HTTP://Images.Example.com:80/x', none).href).toBe('http://images.example.com/x');
  });

  describe('refuses IP literals in blocked ranges in every spelling', () => {
    it.each([
      ['http://127.0.0.1/', '127.0.0.1, a loopback'],
      ['http://2130706433/', '127.0.0.1, a loopback'],
      ['http://0x7f000001/', '127.0.0.1'],
      ['http://0x7f.1/', '127.0.0.1'],
      ['http://0177.0.0.1/', '127.0.0.1'],
      ['http://017700000001/', '127.0.0.1'],
      ['http://127.1/', '127.0.0.1'],
      ['http://127.0.1/', '127.0.0.1'],
      ['http://127.0.0.1./', '127.0.0.1'],
      ['http://%31%32%37.0.0.1/', '127.0.0.1'],
      ['http://１２７.０.０.１/', '127.0.0.1'],
      ['http://0/', '0.0.0.0'],
      ['http://0.0.0.0:8080/', '0.0.0.0'],
      ['http://169.254.169.254/latest/meta-data/', 'cloud metadata'],
      ['http://0xa9fea9fe/', 'cloud metadata'],
      ['http://2852039166/', 'cloud metadata'],
      ['http://10.0.0.1/', 'private'],
      ['http://192.168.0.1/', 'private'],
      ['http://172.16.0.1/', 'private'],
      ['http://100.100.100.200/', 'carrier-grade NAT'],
      ['http://224.0.0.1/', 'multicast'],
      ['http://255.255.255.255/', 'broadcast'],
      ['http://[::1]/', '::1, a loopback'],
      ['http://[0:0:0:0:0:0:0:1]/', 'loopback'],
      ['http://[::]/', 'unspecified'],
      ['http://[::ffff:127.0.0.1]/', 'loopback'],
      ['http://[0:0:0:0:0:ffff:7f00:1]/', 'loopback'],
      ['http://[::ffff:169.254.169.254]/', 'cloud metadata'],
      ['http://[::127.0.0.1]/', 'IPv4-compatible'],
      ['http://[64:ff9b::127.0.0.1]/', 'NAT64'],
      ['http://[64:ff9b::a9fe:a9fe]/', 'cloud metadata'],
      ['http://[2002:7f00:1::]/', '6to4'],
      ['http://[2002:a9fe:a9fe::1]/', 'cloud metadata'],
      ['http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/', 'Teredo'],
      ['http://[fd00:ec2::254]/latest/meta-data/', 'cloud metadata'],
      ['http://[fe80::1]/', 'link-local'],
      ['http://[fc00::1]/', 'unique local'],
      ['http://[ff02::1]/', 'multicast'],
    ])('%s', (url, reason) => {
      const error = refusal(url);
      expect(error.context.field).toBe('url');
      expect(error.message).toContain(reason);
      expect(error.message).toContain('STRATA_FETCH_ALLOWLIST');
    });
  });

  it.each(['http://localhost/', 'http://LOCALHOST./', 'http://localhost:8080/x', 'http://images.localhost/'])(
    'refuses the loopback name in %s',
    (url) => {
      expect(refusal(url).message).toMatch(/loopback name/);
    },
  );

  it.each([
    ['file:///etc/passwd', 'not file'],
    ['ftp://images.example.com/x', 'not ftp'],
    ['gopher://images.example.com:70/_x', 'not gopher'],
    ['dict://images.example.com:11211/stat', 'not dict'],
    ['ldap://images.example.com/', 'not ldap'],
    ['data:text/plain,hello', 'not data'],
    ['javascript:alert(1)', 'not javascript'],
    ['ws://images.example.com/', 'not ws'],
    ['jar:http://images.example.com/x.jar!/', 'not jar'],
  ])('refuses the scheme of %s', (url, reason) => {
    expect(refusal(url).message).toContain(`must use http or https, ${reason}`);
  });

  it.each([
    'http://user:secret@images.example.com/x',
    'http://user@images.example.com/x',
    'http://:secret@images.example.com/x',
    'http://images.example.com@127.0.0.1/x',
    'https://user:secret@8.8.8.8/x',
  ])('refuses credentials in %s without echoing them', (url) => {
    const error = refusal(url, parseAllowlist('127.0.0.1'));
    expect(error.message).toMatch(/credentials/);
    expect(error.message).not.toContain('secret');
  });

  it.each([
    '',
    'not a url',
    '/relative/path',
    'http://',
    'http://[::1/',
    'http://exa mple.com/',
    'http://256.256.256.256/',
    `http://images.example.com/${'a'.repeat(9000)}`,
  ])('refuses the malformed %j', (url) => {
    expect(refusal(url).context.field).toBe('url');
  });

  it('lets the allowlist open addresses and names', () => {
    const list = parseAllowlist('127.0.0.1,localhost,10.0.0.0/8');
    expect(checkUrlUpFront('http://127.0.0.1:8080/x', list).port).toBe('8080');
    expect(checkUrlUpFront('http://2130706433/', list).hostname).toBe('127.0.0.1');
    expect(checkUrlUpFront('http://[::ffff:127.0.0.1]/', list).hostname).toBe('[::ffff:7f00:1]');
    expect(checkUrlUpFront('http://LocalHost./', list).hostname).toBe('localhost.');
    expect(checkUrlUpFront('http://10.9.8.7/', list).hostname).toBe('10.9.8.7');
    expect(refusal('http://127.0.0.2/', list).message).toContain('loopback');
    expect(refusal('http://192.168.0.1/', list).message).toContain('private');
    expect(refusal('http://[::1]/', list).message).toContain('loopback');
  });
});
