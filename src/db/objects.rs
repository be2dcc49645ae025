//! Objects that belong to published paths: a realisation belongs to its output path, a
//! derivation's build log to the paths that derivation built. The object lives in the store;
//! its rows here say which paths it belongs to, so retention deletes it with the last of
//! them (see `gc::run`).

use std::collections::HashSet;

use super::{on_pool, Db, DbError};

/// What kind of object a row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathObjectKind {
    /// `realisations/<id>.doi`.
    Realisation,
    /// `log/<drv>`.
    DrvLog,
}

impl PathObjectKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Realisation => "realisation",
            Self::DrvLog => "log",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "realisation" => Some(Self::Realisation),
            "log" => Some(Self::DrvLog),
            _ => None,
        }
    }
}

/// One object: its kind and name (a realisation id, a derivation basename).
pub type PathObject = (PathObjectKind, String);

impl Db {
    /// Records that the object `name` of `kind` belongs to each of `hashes` (idempotent).
    pub async fn attach_object(&self, kind: PathObjectKind, name: &str, hashes: &[String]) -> Result<(), DbError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for hash in hashes {
                sqlx::query("INSERT INTO path_objects (kind, name, hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(kind.as_str()).bind(name).bind(hash).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Hash parts of the published paths built by the derivation `deriver` (a basename).
    pub async fn built_by(&self, deriver: &str) -> Result<Vec<String>, DbError> {
        on_pool!(self, pool => Ok(sqlx::query_scalar("SELECT hash FROM paths WHERE deriver = $1 ORDER BY hash")
            .bind(deriver).fetch_all(pool).await?))
    }

    /// The objects that belong to none of the paths outside `gone` once those are gone:
    /// each object attached to one of `gone` and to no other path. Read-only, so a
    /// collection interrupted after deleting the objects finds them again (already gone).
    pub async fn objects_only_of(&self, gone: &[String]) -> Result<Vec<PathObject>, DbError> {
        let gone_set: HashSet<&str> = gone.iter().map(String::as_str).collect();
        let mut rows: Vec<(String, String, String)> = Vec::new();
        for chunk in gone.chunks(500) {
            on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT o.kind, o.name, o.hash FROM path_objects o JOIN path_objects g
                     ON g.kind = o.kind AND g.name = o.name WHERE g.hash IN (",
                );
                {
                    let mut list = q.separated(", ");
                    for hash in chunk {
                        list.push_bind(hash);
                    }
                }
                q.push(")");
                rows.extend(q.build_query_as::<(String, String, String)>().fetch_all(pool).await?);
            });
        }
        let mut kept: HashSet<(String, String)> = HashSet::new();
        let mut all: HashSet<(String, String)> = HashSet::new();
        for (kind, name, hash) in rows {
            if !gone_set.contains(hash.as_str()) {
                kept.insert((kind.clone(), name.clone()));
            }
            all.insert((kind, name));
        }
        let mut objects: Vec<PathObject> = all
            .into_iter()
            .filter(|o| !kept.contains(o))
            .filter_map(|(kind, name)| Some((PathObjectKind::parse(&kind)?, name)))
            .collect();
        objects.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        Ok(objects)
    }

    /// Forgets which objects belonged to the paths `gone`.
    pub async fn detach_objects(&self, gone: &[String]) -> Result<(), DbError> {
        for chunk in gone.chunks(500) {
            on_pool!(self, pool => {
                let mut q = sqlx::QueryBuilder::new("DELETE FROM path_objects WHERE hash IN (");
                {
                    let mut list = q.separated(", ");
                    for hash in chunk {
                        list.push_bind(hash);
                    }
                }
                q.push(")");
                q.build().execute(pool).await?;
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::for_each_backend;

    for_each_backend! {
        /// A log of a derivation with two outputs stays while either output does.
        async fn an_object_goes_with_the_last_path_it_belongs_to(db: Db) {
            let (a, b) = ("a".repeat(32), "b".repeat(32));
            db.attach_object(PathObjectKind::DrvLog, "x.drv", &[a.clone(), b.clone()]).await.unwrap();
            db.attach_object(PathObjectKind::Realisation, "sha256:1!out", std::slice::from_ref(&a)).await.unwrap();
            db.attach_object(PathObjectKind::Realisation, "sha256:1!out", std::slice::from_ref(&a)).await.unwrap();
            let only_a = db.objects_only_of(std::slice::from_ref(&a)).await.unwrap();
            assert_eq!(only_a, [(PathObjectKind::Realisation, "sha256:1!out".to_owned())]);
            assert_eq!(db.objects_only_of(std::slice::from_ref(&a)).await.unwrap(), only_a, "read-only");
            db.detach_objects(std::slice::from_ref(&a)).await.unwrap();
            assert_eq!(db.objects_only_of(std::slice::from_ref(&a)).await.unwrap(), []);
            assert_eq!(
                db.objects_only_of(std::slice::from_ref(&b)).await.unwrap(),
                [(PathObjectKind::DrvLog, "x.drv".to_owned())]
            );
        }
    }
}
