//! The bucket registry actor: owner of the catalog (buckets and connections).
//!
//! Every catalog write goes through this actor, one at a time, so checks that span records
//! ("is this connection still used by an adapter?", "is this bucket name taken?") cannot
//! race. Reads go straight to the store. On (re)start it reloads everything from the store,
//! so a crash loses nothing that was acknowledged.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::catalog::bucket::CreateBucket;
use crate::catalog::connection::ProviderConfig;
use crate::catalog::{Bucket, Connection, ProviderType};
use crate::error::ApiError;
use crate::ids::{BucketId, ConnectionId};
use crate::state::Shared;
use crate::store::{Batch, Keyspace};
use crate::util::now_rfc3339;

pub struct BucketRegistry;

pub enum RegistryMsg {
    CreateBucket {
        namespace: String,
        body: CreateBucket,
        reply: RpcReplyPort<Result<Bucket, ApiError>>,
    },
    DeleteBucket {
        namespace: String,
        bucket_id: BucketId,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
    CreateConnection {
        name: String,
        provider_type: ProviderType,
        config: Box<ProviderConfig>,
        reply: RpcReplyPort<Result<Connection, ApiError>>,
    },
    DeleteConnection {
        connection_id: ConnectionId,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
    /// Fault injection for supervision tests (`/v1/debug/crash`).
    Crash,
}

pub struct RegistryState {
    shared: Shared,
}

impl Actor for BucketRegistry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = Shared;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, shared: Shared) -> Result<Self::State, ActorProcessingErr> {
        let n = shared.store.count(Keyspace::BUCKETS, "")?;
        crate::metrics::buckets(n);
        tracing::debug!(buckets = n, "bucket registry started");
        Ok(RegistryState { shared })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::CreateBucket { namespace, body, reply } => {
                let _ = reply.send(state.create_bucket(namespace, body).await);
            }
            RegistryMsg::DeleteBucket { namespace, bucket_id, reply } => {
                let _ = reply.send(state.delete_bucket(&namespace, &bucket_id).await);
            }
            RegistryMsg::CreateConnection { name, provider_type, config, reply } => {
                let _ = reply.send(state.create_connection(name, provider_type, &config).await);
            }
            RegistryMsg::DeleteConnection { connection_id, reply } => {
                let _ = reply.send(state.delete_connection(&connection_id).await);
            }
            RegistryMsg::Crash => {
                return Err(ActorProcessingErr::from("crash requested through /v1/debug/crash"));
            }
        }
        Ok(())
    }
}

impl RegistryState {
    async fn create_bucket(&mut self, namespace: String, body: CreateBucket) -> Result<Bucket, ApiError> {
        let store = &self.shared.store;
        let mut taken = false;
        store.for_each::<Bucket>(Keyspace::BUCKETS, "", |_, b| {
            taken = b.namespace == namespace && b.bucket_name == body.bucket_name;
            !taken
        })?;
        if taken {
            return Err(ApiError::Conflict(format!(
                "a bucket named {:?} already exists in namespace {namespace:?}",
                body.bucket_name
            )));
        }
        let now = now_rfc3339();
        let bucket = Bucket {
            bucket_id: BucketId::generate(),
            bucket_name: body.bucket_name,
            namespace,
            description: body.description,
            bucket_schema: body.bucket_schema,
            created_at: now.clone(),
            updated_at: now,
        };
        let mut b = Batch::new();
        b.put(Keyspace::BUCKETS, bucket.bucket_id.as_str(), &bucket);
        store.commit(b).await?;
        crate::metrics::buckets(store.count(Keyspace::BUCKETS, "")?);
        tracing::info!(bucket_id = %bucket.bucket_id, namespace = %bucket.namespace, "bucket created");
        Ok(bucket)
    }

    async fn delete_bucket(&mut self, namespace: &str, id: &BucketId) -> Result<(), ApiError> {
        let store = &self.shared.store;
        let Some(bucket) = store.get::<Bucket>(Keyspace::BUCKETS, id.as_str())? else {
            return Err(not_found_bucket(id));
        };
        if bucket.namespace != namespace {
            return Err(not_found_bucket(id));
        }
        let mut b = Batch::new();
        b.delete(Keyspace::BUCKETS, id.as_str());
        // Everything keyed under the bucket goes with it.
        let prefix = format!("{}/", id.as_str());
        for ks in [Keyspace::OBJECTS, Keyspace::BATCHES, Keyspace::DEDUP, Keyspace::BUFFER, Keyspace::STATS] {
            store.for_each_key(ks, &prefix, |k| {
                b.delete(ks, k);
                true
            })?;
        }
        store.commit(b).await?;
        crate::metrics::buckets(store.count(Keyspace::BUCKETS, "")?);
        tracing::info!(bucket_id = %id, "bucket deleted");
        Ok(())
    }

    async fn create_connection(
        &mut self,
        name: String,
        provider_type: ProviderType,
        config: &ProviderConfig,
    ) -> Result<Connection, ApiError> {
        let conn = Connection::new(name, provider_type, config, &self.shared.secrets);
        let mut b = Batch::new();
        b.put(Keyspace::CONNECTIONS, conn.connection_id.as_str(), &conn);
        self.shared.store.commit(b).await?;
        tracing::info!(connection_id = %conn.connection_id, provider_type = provider_type.as_str(), "connection created");
        Ok(conn)
    }

    async fn delete_connection(&mut self, id: &ConnectionId) -> Result<(), ApiError> {
        let store = &self.shared.store;
        if !store.contains(Keyspace::CONNECTIONS, id.as_str())? {
            return Err(ApiError::NotFound(format!("connection {id} not found")));
        }
        let users = self.shared.connection_users(id)?;
        if !users.is_empty() {
            return Err(ApiError::Conflict(format!(
                "connection {id} is used by the source adapter of bucket(s) {}; remove or change those adapters first",
                users.join(", ")
            )));
        }
        let mut b = Batch::new();
        b.delete(Keyspace::CONNECTIONS, id.as_str());
        store.commit(b).await?;
        tracing::info!(connection_id = %id, "connection deleted");
        Ok(())
    }
}

pub fn not_found_bucket(id: &BucketId) -> ApiError {
    ApiError::NotFound(format!("bucket {id} not found in this namespace"))
}
