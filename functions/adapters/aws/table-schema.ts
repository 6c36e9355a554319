/**
 * The one table's physical schema, shared by the CDK stack, the embedded stack (which creates it in
 * DynamoDB Local) and the repository adapter. Access patterns are documented in `table-keys.ts`.
 */
export const TableSchema = {
  partitionKey: 'pk',
  sortKey: 'sk',
  /** Entities of one type, oldest first: gsi1pk = TYPE, gsi1sk = createdAt#id. */
  byType: { indexName: 'by-type', partitionKey: 'gsi1pk', sortKey: 'gsi1sk' },
  /** Objects held by one store: gsi2pk = STORE#id, gsi2sk = TYPE#id. */
  byStore: { indexName: 'by-store', partitionKey: 'gsi2pk', sortKey: 'gsi2sk' },
  /** Sparse: only entities holding a lease; leasePk = LEASE, leaseExpiresAt = ISO time. */
  byLease: { indexName: 'by-lease', partitionKey: 'leasePk', sortKey: 'leaseExpiresAt' },
  /** Epoch seconds; DynamoDB TTL deletes idempotency records after it. */
  ttlAttribute: 'ttl',
} as const;
