//! Groups: listing members (old-style symbol tables or new-style link messages), walking
//! relative paths, and the group's attributes.

use std::sync::Arc;

use super::attribute::{self, Attribute};
use super::cursor::Cursor;
use super::dataset::Dataset;
use super::error::{Error, Result, bail};
use super::link::{self, Target};
use super::object_header::{self, ObjectHeader, kind};
use super::source::Reader;
use super::symbol_table;

/// What a group member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Group,
    Dataset,
    /// A committed datatype, a soft or external link, or anything else.
    Other,
}

/// An open group. Cloning is cheap: the header is parsed once and shared.
#[derive(Clone)]
pub struct Group {
    reader: Arc<Reader>,
    path: String,
    header: Arc<ObjectHeader>,
}

/// Classifies an object by the messages its header carries.
fn kind_of(header: &ObjectHeader) -> ObjectKind {
    if header.has(kind::LAYOUT) {
        ObjectKind::Dataset
    } else if [
        kind::SYMBOL_TABLE,
        kind::LINK_INFO,
        kind::LINK,
        kind::GROUP_INFO,
    ]
    .iter()
    .any(|&k| header.has(k))
    {
        ObjectKind::Group
    } else {
        ObjectKind::Other
    }
}

fn join(base: &str, name: &str) -> String {
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}

impl Group {
    pub(super) fn open(reader: Arc<Reader>, path: String, addr: u64) -> Result<Group> {
        let header =
            object_header::read(&reader, addr).map_err(|e| e.context(format!("group {path}")))?;
        Group::from_header(reader, path, Arc::new(header))
    }

    fn from_header(reader: Arc<Reader>, path: String, header: Arc<ObjectHeader>) -> Result<Group> {
        match kind_of(&header) {
            ObjectKind::Group => Ok(Group {
                reader,
                path,
                header,
            }),
            ObjectKind::Dataset => bail!("{path} is a dataset, not a group"),
            ObjectKind::Other => bail!("{path} is not a group"),
        }
    }

    /// Absolute path: "/", "/block1_conv1", ...
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Names of all links in this group, in storage order (sorted by name for old-style
    /// groups, creation order for new-style ones).
    pub fn member_names(&self) -> Result<Vec<String>> {
        Ok(self.members()?.into_iter().map(|(name, _)| name).collect())
    }

    /// What `name` (a direct member) is; `None` if there is no such member. Soft and
    /// external links are `Other`: we do not follow them.
    pub fn member_kind(&self, name: &str) -> Result<Option<ObjectKind>> {
        let Some((_, target)) = self.members()?.into_iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        Ok(Some(match target {
            Target::Hard(addr) => {
                let path = join(&self.path, name);
                kind_of(&object_header::read(&self.reader, addr).map_err(|e| e.context(path))?)
            }
            Target::Soft(_) | Target::External => ObjectKind::Other,
        }))
    }

    /// The group at a relative path ("a/b"). `Ok(None)` if it does not exist; an error if
    /// it exists but is not a group, or cannot be read.
    pub fn group(&self, path: &str) -> Result<Option<Group>> {
        match self.resolve(path)? {
            Some((full, header)) => Group::from_header(self.reader.clone(), full, header).map(Some),
            None => Ok(None),
        }
    }

    /// The dataset at a relative path; same conventions as [`Group::group`].
    pub fn dataset(&self, path: &str) -> Result<Option<Dataset>> {
        match self.resolve(path)? {
            Some((full, header)) => Dataset::open(self.reader.clone(), full, &header).map(Some),
            None => Ok(None),
        }
    }

    /// Names of this group's attributes.
    pub fn attr_names(&self) -> Result<Vec<String>> {
        self.check_compact_attributes()?;
        self.header
            .all(kind::ATTRIBUTE)
            .map(|m| {
                attribute::name(m).map_err(|e| e.context(format!("attribute of {}", self.path)))
            })
            .collect()
    }

    /// The attribute `name`, or `None`.
    pub fn attr(&self, name: &str) -> Result<Option<Attribute>> {
        self.check_compact_attributes()?;
        for message in self.header.all(kind::ATTRIBUTE) {
            let found = attribute::raw_name(message)
                .map_err(|e| e.context(format!("attribute of {}", self.path)))?;
            if found == name.as_bytes() {
                return attribute::parse(message, self.reader.clone(), &self.path).map(Some);
            }
        }
        Ok(None)
    }

    /// Attributes beyond what fits in the header (by default more than 8 with
    /// `libver='latest'`, or any larger than 64 KiB) go to a fractal heap we do not read.
    fn check_compact_attributes(&self) -> Result<()> {
        if let Some(info) = self.header.find(kind::ATTRIBUTE_INFO) {
            let dense = link::dense_heap_address(&info.data, self.reader.sizes, 2)
                .map_err(|e| e.context(format!("group {}", self.path)))?;
            if dense.is_some() {
                return Err(Error::unsupported(format!(
                    "dense attribute storage (attributes of {})",
                    self.path
                )));
            }
        }
        Ok(())
    }

    /// All (name, target) links of this group.
    fn members(&self) -> Result<Vec<(String, Target)>> {
        self.members_inner()
            .map_err(|e| e.context(format!("group {}", self.path)))
    }

    fn members_inner(&self) -> Result<Vec<(String, Target)>> {
        let sizes = self.reader.sizes;
        if let Some(table) = self.header.find(kind::SYMBOL_TABLE) {
            let mut c = Cursor::new(&table.data);
            let btree = c
                .addr(sizes)?
                .ok_or_else(|| Error::new("symbol table B-tree address is undefined"))?;
            let heap = c
                .addr(sizes)?
                .ok_or_else(|| Error::new("symbol table heap address is undefined"))?;
            let members = symbol_table::members(&self.reader, btree, heap)?;
            return Ok(members
                .into_iter()
                .map(|(name, addr)| (name, Target::Hard(addr)))
                .collect());
        }
        if let Some(info) = self.header.find(kind::LINK_INFO)
            && link::dense_heap_address(&info.data, sizes, 8)?.is_some()
        {
            return Err(Error::unsupported(
                "dense link storage (a new-style group with many members, e.g. written with libver='latest')",
            ));
        }
        self.header
            .all(kind::LINK)
            .map(|m| link::parse(&m.data, sizes))
            .collect()
    }

    /// Follows a relative path from this group; `None` when a component does not exist.
    /// An empty path names this group itself.
    fn resolve(&self, path: &str) -> Result<Option<(String, Arc<ObjectHeader>)>> {
        let mut full = self.path.clone();
        let mut header = self.header.clone();
        for name in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            let group = Group::from_header(self.reader.clone(), full.clone(), header)?;
            let Some((_, target)) = group.members()?.into_iter().find(|(n, _)| n == name) else {
                return Ok(None);
            };
            full = join(&full, name);
            header = match target {
                Target::Hard(addr) => {
                    Arc::new(object_header::read(&self.reader, addr).map_err(|e| e.context(&full))?)
                }
                Target::Soft(to) => {
                    return Err(Error::unsupported(format!("soft link {full} -> {to}")));
                }
                Target::External => {
                    return Err(Error::unsupported(format!("external link {full}")));
                }
            };
        }
        Ok(Some((full, header)))
    }
}
