/**
 * CloudFormation intrinsic functions, evaluated the way CloudFormation does at deploy time, against
 * the physical ids and attributes the local deployment gave each resource.
 */

/** What `Ref` and `Fn::GetAtt` resolve to. */
export interface ResolveEnv {
  ref(logicalId: string): string;
  getAtt(logicalId: string, attribute: string): string;
  pseudo: Record<string, string>;
  parameters?: Record<string, string>;
}

export class ResolveError extends Error {
  constructor(
    message: string,
    readonly path: string,
  ) {
    super(`${path}: ${message}`);
    this.name = 'ResolveError';
  }
}

/** The sentinel `Ref: AWS::NoValue` resolves to: the property is removed. */
const NO_VALUE = Symbol('AWS::NoValue');

function asString(value: unknown, where: string): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  throw new ResolveError(`expected a string, got ${JSON.stringify(value)}`, where);
}

/** Replaces every intrinsic in `value` with its value. */
export function resolve(value: unknown, env: ResolveEnv, where = '$'): unknown {
  const out = resolveInner(value, env, where);
  return out === NO_VALUE ? undefined : out;
}

function resolveInner(value: unknown, env: ResolveEnv, where: string): unknown {
  if (Array.isArray(value)) {
    return value.map((v, i) => resolveInner(v, env, `${where}[${i}]`)).filter((v) => v !== NO_VALUE);
  }
  if (value === null || typeof value !== 'object') return value;
  const entries = Object.entries(value as Record<string, unknown>);
  if (entries.length === 1) {
    const [key, arg] = entries[0]!;
    const at = `${where}.${key}`;
    switch (key) {
      case 'Ref': {
        const name = asString(arg, at);
        if (name === 'AWS::NoValue') return NO_VALUE;
        if (name.startsWith('AWS::')) {
          const pseudo = env.pseudo[name];
          if (pseudo === undefined) throw new ResolveError(`unknown pseudo parameter ${name}`, at);
          return pseudo;
        }
        if (env.parameters && name in env.parameters) return env.parameters[name];
        return env.ref(name);
      }
      case 'Fn::GetAtt': {
        const [id, attribute] = Array.isArray(arg) ? arg : asString(arg, at).split('.');
        return env.getAtt(asString(id, at), asString(attribute, at));
      }
      case 'Fn::Join': {
        if (!Array.isArray(arg) || arg.length !== 2) throw new ResolveError('takes [delimiter, list]', at);
        const list = resolveInner(arg[1], env, `${at}[1]`);
        if (!Array.isArray(list)) throw new ResolveError('the list is not an array', at);
        return list.map((v, i) => asString(v, `${at}[1][${i}]`)).join(asString(arg[0], at));
      }
      case 'Fn::Sub': {
        const [template, vars] = Array.isArray(arg) ? [arg[0], arg[1]] : [arg, {}];
        const bound = Object.fromEntries(
          Object.entries((vars ?? {}) as Record<string, unknown>).map(([k, v]) => [
            k,
            asString(resolveInner(v, env, `${at}.${k}`), at),
          ]),
        );
        return asString(template, at).replace(/\$\{([^}!]+)\}/g, (_, name: string) => {
          if (name in bound) return bound[name]!;
          if (name.startsWith('AWS::')) {
            const pseudo = env.pseudo[name];
            if (pseudo === undefined) throw new ResolveError(`unknown pseudo parameter ${name}`, at);
            return pseudo;
          }
          const dot = name.indexOf('.');
          if (dot > 0) return env.getAtt(name.slice(0, dot), name.slice(dot + 1));
          if (env.parameters && name in env.parameters) return env.parameters[name]!;
          return env.ref(name);
        });
      }
      case 'Fn::Select': {
        if (!Array.isArray(arg) || arg.length !== 2) throw new ResolveError('takes [index, list]', at);
        const index = Number(resolveInner(arg[0], env, at));
        const list = resolveInner(arg[1], env, at);
        if (!Array.isArray(list) || !Number.isInteger(index) || index < 0 || index >= list.length) {
          throw new ResolveError('index out of range', at);
        }
        return list[index];
      }
      case 'Fn::Split': {
        if (!Array.isArray(arg) || arg.length !== 2) throw new ResolveError('takes [delimiter, string]', at);
        return asString(resolveInner(arg[1], env, at), at).split(asString(arg[0], at));
      }
      case 'Fn::If':
      case 'Fn::Equals':
      case 'Fn::FindInMap':
      case 'Fn::ImportValue':
      case 'Fn::GetAZs':
      case 'Fn::Base64':
      case 'Fn::Cidr':
        throw new ResolveError(`${key} is not supported by the embedded stack`, at);
      default:
        break;
    }
  }
  const out: Record<string, unknown> = {};
  for (const [k, v] of entries) {
    const resolved = resolveInner(v, env, `${where}.${k}`);
    if (resolved !== NO_VALUE) out[k] = resolved;
  }
  return out;
}
