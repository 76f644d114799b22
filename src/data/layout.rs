//! Finding the images of a task on disk. Three layouts are recognised, and a folder that looks like more
//! than one of them (or none) is refused with what was found:
//!
//! - **ImageFolder** (torchvision's): `root/<class>/*.{jpg,jpeg,png}`, classes numbered in sorted name
//!   order; with `train/` and `val/` or `test/` subfolders when the root holds them (classes come from
//!   `train/`; the evaluation split may lack a class but not add one). Files with other extensions are
//!   skipped, and counted on stderr, as torchvision skips them.
//! - **VTAB-1k lists** (the PEFT-for-vision literature's): `task/train800.txt`, `val200.txt`,
//!   `train800val200.txt`, `test.txt`, one `<path relative to the task folder> <integer label>` per line.
//! - **IDX**: the four MNIST-style files (see [`super::embedded::load_dir`]).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The image files an [`ImageFolder`](Layout::ImageFolder) class folder may hold.
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// The list files of a VTAB-1k task folder.
pub const VTAB_LISTS: [&str; 4] = [
    "train800.txt",
    "val200.txt",
    "train800val200.txt",
    "test.txt",
];
/// Largest label a list may give (a guard against a column of file sizes read as labels).
pub const MAX_LABEL: usize = 1 << 16;

/// How a data folder is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `root/<class>/*.png`, optionally under `train/` and `val/` or `test/`.
    ImageFolder,
    /// A VTAB-1k task folder with its list files.
    VtabLists,
    /// The four IDX files.
    Idx,
}

impl Layout {
    /// How the layout is named in messages.
    pub fn describe(self) -> &'static str {
        match self {
            Layout::ImageFolder => "ImageFolder",
            Layout::VtabLists => "VTAB-1k lists",
            Layout::Idx => "IDX files",
        }
    }
}

/// One image of a list: its file, its label, and where it was listed (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedImage {
    /// The image file.
    pub path: PathBuf,
    /// Its class, below the list's class count.
    pub label: usize,
    /// `list.txt:12` for a list entry, the file's path for a folder entry.
    pub origin: String,
}

/// The images of one split with their labels and the task's class names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageList {
    /// The images in order.
    pub items: Vec<ListedImage>,
    /// The class names, indexed by label (for lists: the label's number as text).
    pub class_names: Vec<String>,
}

impl ImageList {
    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.class_names.len()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The entries of `dir`, sorted by name: (subfolders, files).
fn entries(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        // Follows symbolic links, as torchvision does.
        if path.is_dir() {
            dirs.push(path);
        } else {
            files.push(path);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_image_file(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn has_idx(dir: &Path) -> bool {
    ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]
        .iter()
        .any(|f| dir.join(f).is_file() || dir.join(format!("{f}.gz")).is_file())
}

/// Which layout `dir` holds. An error says what the folder holds when it is none of them or looks like
/// several.
pub fn detect(dir: &Path) -> Result<Layout> {
    if !dir.is_dir() {
        return Err(Error::invalid(
            "data",
            format!("{} is not a folder", dir.display()),
        ));
    }
    let (dirs, files) = entries(dir)?;
    let lists: Vec<String> = VTAB_LISTS
        .iter()
        .filter(|l| dir.join(l).is_file())
        .map(|l| l.to_string())
        .collect();
    let idx = has_idx(dir);
    let tasks: Vec<String> = dirs
        .iter()
        .filter(|d| VTAB_LISTS.iter().any(|l| d.join(l).is_file()))
        .map(|d| file_name(d))
        .collect();
    if lists.is_empty() && !tasks.is_empty() {
        return Err(Error::invalid(
            "data",
            format!(
                "{} is a folder of VTAB-1k tasks ({}), not one task: point --data at one of them, or run                  them all with `liera vtab --root {}`",
                dir.display(),
                tasks.join(", "),
                dir.display()
            ),
        ));
    }
    let folders = !dirs.is_empty()
        && !lists.iter().any(|l| l.starts_with("train"))
        && (dirs.iter().any(|d| file_name(d) == "train")
            || dirs.iter().all(|d| {
                std::fs::read_dir(d)
                    .map(|mut it| {
                        it.any(|e| e.is_ok_and(|e| e.path().is_dir() || is_image_file(&e.path())))
                    })
                    .unwrap_or(false)
            }));
    let mut found = Vec::new();
    if !lists.is_empty() {
        found.push(Layout::VtabLists);
    }
    if idx {
        found.push(Layout::Idx);
    }
    if folders && lists.is_empty() {
        found.push(Layout::ImageFolder);
    }
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::invalid(
            "data",
            format!(
                "{} holds no known layout: no class folders of .jpg/.jpeg/.png images, no VTAB-1k list \
                 files ({}), no IDX files; it has {} folder(s) and {} file(s){}",
                dir.display(),
                VTAB_LISTS.join(", "),
                dirs.len(),
                files.len(),
                if files.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (e.g. {})",
                        files.iter().take(3).map(|f| file_name(f)).collect::<Vec<_>>().join(", ")
                    )
                }
            ),
        )),
        several => Err(Error::invalid(
            "data",
            format!(
                "{} is ambiguous: it looks like {} at once (lists: [{}], IDX files: {}); point --data at \
                 one of them",
                dir.display(),
                several
                    .iter()
                    .map(|l| l.describe())
                    .collect::<Vec<_>>()
                    .join(" and "),
                lists.join(", "),
                idx
            ),
        )),
    }
}

/// An ImageFolder split: `root/<class>/*`, classes in sorted name order, or the names of `classes` when
/// given (an evaluation split must use its training split's numbering). Returns the list and how many
/// files were skipped for their extension.
pub fn image_folder(root: &Path, classes: Option<&[String]>) -> Result<(ImageList, usize)> {
    let (dirs, _) = entries(root)?;
    let names: Vec<String> = dirs.iter().map(|d| file_name(d)).collect();
    if names.is_empty() {
        return Err(Error::invalid(
            "data",
            format!("{} has no class folders", root.display()),
        ));
    }
    let class_names = match classes {
        Some(known) => {
            if let Some(extra) = names.iter().find(|n| !known.contains(n)) {
                return Err(Error::invalid(
                    "data",
                    format!(
                        "{} has a class folder `{extra}` that the training split does not have (its \
                         classes: {})",
                        root.display(),
                        known.join(", ")
                    ),
                ));
            }
            known.to_vec()
        }
        None => names.clone(),
    };
    let mut items = Vec::new();
    let mut skipped = 0;
    for (dir, name) in dirs.iter().zip(&names) {
        let label = class_names
            .iter()
            .position(|c| c == name)
            .expect("every folder name is a class");
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        let before = items.len();
        for f in files {
            if is_image_file(&f) {
                items.push(ListedImage {
                    origin: f.display().to_string(),
                    path: f,
                    label,
                });
            } else {
                skipped += 1;
            }
        }
        if items.len() == before {
            return Err(Error::invalid(
                "data",
                format!(
                    "class folder {} holds no .jpg, .jpeg or .png image",
                    dir.display()
                ),
            ));
        }
    }
    Ok((ImageList { items, class_names }, skipped))
}

/// Every file under `dir`, recursively, in sorted order (torchvision walks class folders recursively).
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let (dirs, files) = entries(dir)?;
    out.extend(files);
    for d in dirs {
        collect_files(&d, out)?;
    }
    Ok(())
}

/// Reads a VTAB-1k list file: `<relative path> <integer label>` per line (blank lines skipped). Paths are
/// relative to the list's folder and may contain spaces (the label is the last field). Errors name the file
/// and line: a line without a label, a label that is not a non-negative integer or is above
/// [`MAX_LABEL`], a listed image that does not exist.
pub fn read_list(list: &Path) -> Result<Vec<ListedImage>> {
    let text = std::fs::read_to_string(list).map_err(io_err(list))?;
    let base = list.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let origin = format!("{}:{}", list.display(), i + 1);
        let bad = |msg: String| Error::Format {
            path: origin.clone(),
            msg,
        };
        let Some((rel, label)) = line.rsplit_once(char::is_whitespace) else {
            return Err(bad(format!("`{line}` is not `<path> <label>`")));
        };
        let label: usize = label
            .parse()
            .map_err(|_| bad(format!("label `{label}` is not a non-negative integer")))?;
        if label > MAX_LABEL {
            return Err(bad(format!(
                "label {label} is out of range (above {MAX_LABEL})"
            )));
        }
        let path = base.join(rel.trim());
        if !path.is_file() {
            return Err(bad(format!(
                "the listed image {} does not exist",
                path.display()
            )));
        }
        items.push(ListedImage {
            path,
            label,
            origin,
        });
    }
    if items.is_empty() {
        return Err(Error::Format {
            path: list.display().to_string(),
            msg: "the list has no entries".into(),
        });
    }
    Ok(items)
}

/// The lists of a VTAB-1k task as [`ImageList`]s sharing one class count: the largest label of any of
/// `lists` plus one, with the numbers as class names.
pub fn vtab_lists(task: &Path, lists: &[&str]) -> Result<Vec<ImageList>> {
    let read: Vec<Vec<ListedImage>> = lists
        .iter()
        .map(|l| read_list(&task.join(l)))
        .collect::<Result<_>>()?;
    let classes = read
        .iter()
        .flatten()
        .map(|i| i.label + 1)
        .max()
        .unwrap_or(0);
    let class_names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
    Ok(read
        .into_iter()
        .map(|items| ImageList {
            items,
            class_names: class_names.clone(),
        })
        .collect())
}

/// The task folders under a VTAB-1k root: every subfolder holding `train800val200.txt` and `test.txt`,
/// sorted by name. An error if there is none.
pub fn vtab_tasks(root: &Path) -> Result<Vec<PathBuf>> {
    let (dirs, _) = entries(root)?;
    let tasks: Vec<PathBuf> = dirs
        .into_iter()
        .filter(|d| d.join("train800val200.txt").is_file() && d.join("test.txt").is_file())
        .collect();
    if tasks.is_empty() {
        let itself = root.join("train800val200.txt").is_file();
        return Err(Error::invalid(
            "vtab",
            format!(
                "{} has no VTAB-1k task folders (subfolders with train800val200.txt and test.txt){}",
                root.display(),
                if itself {
                    "; it is a task itself: give its parent folder as --root (and --tasks to pick it)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(tasks)
}
