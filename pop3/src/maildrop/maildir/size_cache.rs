//! Wire sizes of message files already read, shared by every session of a
//! store.

use rustix::fs::Stat;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wire sizes keyed by inode, length and mtime: Maildir files never change
/// in place, so a hit is the size. Like Dovecot's index, it spares reading
/// every message at every login when the file names carry no `,W=` size.
#[derive(Debug, Default)]
pub(super) struct SizeCache(Mutex<HashMap<FileStamp, u64>>);

/// Enough entries for a large mail host; past it the cache starts over.
const SIZE_CACHE_LIMIT: usize = 500_000;

impl SizeCache {
    pub(super) fn get(&self, stamp: &FileStamp) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(stamp)
            .copied()
    }

    pub(super) fn put(&self, stamp: FileStamp, size: u64) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SIZE_CACHE_LIMIT {
            map.clear();
        }
        map.insert(stamp, size);
    }
}

/// What identifies one version of a message file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    /// Also the delivery order: the mtime is set at delivery and renames
    /// keep it.
    pub(super) mtime: SystemTime,
}

impl FileStamp {
    // The casts: the field types of `struct stat` differ between
    // architectures; none of these values is out of range of the target.
    #[allow(clippy::unnecessary_cast)]
    /// The file's length in octets.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    // rustix's Stat is libc's or its own by backend, and the workspace's
    // features pick one: st_dev and st_ino are u64 in one, not the other.
    #[allow(clippy::unnecessary_cast)]
    pub(super) fn of(stat: &Stat) -> Self {
        // A time before 1970 sorts as 1970: the order of such mail is moot.
        let mtime = u64::try_from(stat.st_mtime)
            .map(|secs| UNIX_EPOCH + Duration::new(secs, stat.st_mtime_nsec as u32))
            .unwrap_or(UNIX_EPOCH);
        FileStamp {
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
            len: stat.st_size as u64,
            mtime,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::MaildirStore;
    use crate::maildrop::{ForSession, MaildropStore};
    use std::fs;
    use tempfile::TempDir;

    #[test]
    fn sizes_are_cached_per_file_version() {
        let tmp = TempDir::new().unwrap();
        let store = MaildirStore::new(tmp.path().to_path_buf());
        let cur = tmp.path().join("u").join("cur");
        fs::create_dir_all(&cur).unwrap();
        fs::create_dir_all(tmp.path().join("u/new")).unwrap();
        fs::create_dir_all(tmp.path().join("u/tmp")).unwrap();
        let file = cur.join("1.M1P1.h:2,");
        fs::write(&file, "a\nb\n").unwrap();
        let sizes = |store: &MaildirStore| {
            store.open("u", &ForSession::default()).unwrap().messages()[0].size
        };
        assert_eq!(sizes(&store), 6);
        assert_eq!(sizes(&store), 6, "served from the cache");
        // A file rewritten in place (not Maildir practice, but possible)
        // is another version: its size is read again.
        fs::write(&file, "a\nb\nc\n").unwrap();
        assert_eq!(sizes(&store), 9);
    }
}
