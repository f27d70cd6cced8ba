//! The object table being built during a dump: each shared thing gets one
//! id, however many tasks, descriptors or mappings refer to it.

use crate::error::{Context, Result};
use crate::model::{FileId, Object, ObjectId, ObjectKind};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

#[derive(Default)]
pub struct ObjectTable {
    objects: Vec<Object>,
    files: HashMap<String, ObjectId>,
    shmem: HashMap<(u64, u64), ObjectId>,
    /// The first unlinked-file object (descriptor or mapping) of each
    /// (dev, ino): the others refer to it (`UnlinkedMeta::same_as`).
    unlinked: HashMap<(u64, u64), ObjectId>,
}

impl ObjectTable {
    /// Adds an object and returns its id (ids are indexes).
    pub fn add(&mut self, kind: ObjectKind) -> ObjectId {
        let id = self.objects.len() as ObjectId;
        self.objects.push(Object { id, kind });
        id
    }

    /// The [`ObjectKind::File`] for `path`, added once per path.
    pub fn file(&mut self, path: &str) -> Result<ObjectId> {
        if let Some(&id) = self.files.get(path) {
            return Ok(id);
        }
        let id = self.add(ObjectKind::File(file_id(path)?));
        self.files.insert(path.to_string(), id);
        Ok(id)
    }

    /// The shared-memory object of inode (dev, ino), if already added.
    pub fn shmem(&self, dev: u64, ino: u64) -> Option<ObjectId> {
        self.shmem.get(&(dev, ino)).copied()
    }

    /// Adds the shared-memory object of inode (dev, ino).
    pub fn add_shmem(&mut self, dev: u64, ino: u64, kind: ObjectKind) -> ObjectId {
        let id = self.add(kind);
        self.shmem.insert((dev, ino), id);
        id
    }

    /// The first unlinked-file object of inode (dev, ino), if any.
    pub fn unlinked(&self, dev: u64, ino: u64) -> Option<ObjectId> {
        self.unlinked.get(&(dev, ino)).copied()
    }

    /// Records `id` as the unlinked-file object that carries the content
    /// of inode (dev, ino).
    pub fn set_unlinked(&mut self, dev: u64, ino: u64, id: ObjectId) {
        self.unlinked.entry((dev, ino)).or_insert(id);
    }

    /// The object `id`, to amend once more is known about it.
    pub fn get_mut(&mut self, id: ObjectId) -> Option<&mut ObjectKind> {
        self.objects.get_mut(id as usize).map(|o| &mut o.kind)
    }

    /// The objects added so far.
    pub fn as_slice(&self) -> &[Object] {
        &self.objects
    }

    pub fn into_objects(self) -> Vec<Object> {
        self.objects
    }
}

/// The identity of the file at `path` now.
pub fn file_id(path: &str) -> Result<FileId> {
    let md =
        std::fs::metadata(&*crate::ns::mnt::host_path(path)).context(|| format!("stat {path}"))?;
    Ok(FileId {
        path: path.to_string(),
        size: md.size(),
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
        mode: md.mode(),
    })
}
