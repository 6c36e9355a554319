/** The one DynamoDB table, built from the same TableSchema the repository adapter and the embedded stack use. */
import { RemovalPolicy } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import { Construct } from 'constructs';
import { TableSchema } from '../../../functions/adapters/aws/table-schema.js';

const S = dynamodb.AttributeType.STRING;

export class DataTable extends Construct {
  readonly table: dynamodb.Table;

  constructor(scope: Construct, id: string) {
    super(scope, id);
    this.table = new dynamodb.Table(this, 'Table', {
      partitionKey: { name: TableSchema.partitionKey, type: S },
      sortKey: { name: TableSchema.sortKey, type: S },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      deletionProtection: true,
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      timeToLiveAttribute: TableSchema.ttlAttribute,
      // The table is the system of record: a stack deletion must never take it along.
      removalPolicy: RemovalPolicy.RETAIN,
    });
    // by-lease is sparse by construction: only items that carry leasePk appear in it.
    for (const index of [TableSchema.byType, TableSchema.byStore, TableSchema.byLease]) {
      this.table.addGlobalSecondaryIndex({
        indexName: index.indexName,
        partitionKey: { name: index.partitionKey, type: S },
        sortKey: { name: index.sortKey, type: S },
        projectionType: dynamodb.ProjectionType.ALL,
      });
    }
  }
}
