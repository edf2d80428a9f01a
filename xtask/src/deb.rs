//! `cargo xtask deb`: the Debian package, built with dpkg-deb from a
//! staging tree written here (no debhelper, no cargo-deb). What goes where:
//!
//! - the binary, stripped, as /usr/sbin/smtp-gate;
//! - every deploy/*.service as /lib/systemd/system/*.service, with
//!   /usr/sbin/smtp-gate where the source install's /usr/local/sbin/smtp-gate
//!   is, and without the source install's instructions in its comments;
//! - every deploy/*.toml, and deploy/users.example (mode 0600), into
//!   /etc/smtp-gate as conffiles: examples to edit, not a configuration
//!   that works as it is (xtask/deb/README.Debian says why nothing starts);
//! - deploy/README.md as /usr/share/doc/smtp-gate/deploy.md.gz, and every
//!   other file of deploy/ under /usr/share/doc/smtp-gate/examples;
//! - man pages (section 8) and completions (bash, zsh, fish), written by
//!   the binary itself (`smtp-gate generate`, hidden);
//! - README.Debian, the project's README, a changelog and a copyright
//!   file naming the crates linked in;
//! - DEBIAN/: control (Depends from dpkg-shlibdeps), conffiles, md5sums,
//!   and the maintainer scripts of xtask/deb, which do for the units what
//!   dh_installsystemd --no-enable --no-start --restart-after-upgrade
//!   writes, and make the agent's system user.
//!
//! gate-tests' deb_package test builds the package with this same code
//! from the binary it tests, installs and removes it.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context, Result};

use crate::cmd::output;

pub const PACKAGE: &str = "smtp-gate";
/// Where the package puts the binary, and where a source install has it.
pub const BINARY: &str = "/usr/sbin/smtp-gate";
pub const SOURCE_BINARY: &str = "/usr/local/sbin/smtp-gate";
pub const UNIT_DIR: &str = "/lib/systemd/system";
pub const CONFIG_DIR: &str = "/etc/smtp-gate";
pub const DOC_DIR: &str = "/usr/share/doc/smtp-gate";
pub const MAN_DIR: &str = "/usr/share/man/man8";
/// The completion scripts: where each shell's own package looks for them.
pub const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "/usr/share/bash-completion/completions/smtp-gate"),
    ("zsh", "/usr/share/zsh/vendor-completions/_smtp-gate"),
    (
        "fish",
        "/usr/share/fish/vendor_completions.d/smtp-gate.fish",
    ),
];

const MAINTAINER: &str =
    "smtp-gate maintainers <maintainers@users.noreply.r-seed-e6d02a23.example>";

const POSTINST: &str = include_str!("../deb/postinst");
const PRERM: &str = include_str!("../deb/prerm");
const POSTRM: &str = include_str!("../deb/postrm");
const README_DEBIAN: &str = include_str!("../deb/README.Debian");
const COPYRIGHT: &str = include_str!("../deb/copyright");

/// The workspace this xtask belongs to.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_path_buf()
}

/// A package built.
#[derive(Debug)]
pub struct Package {
    /// The .deb file.
    pub deb: PathBuf,
    pub version: String,
    /// The conffiles, absolute paths.
    pub conffiles: Vec<String>,
    /// The units, file names.
    pub units: Vec<String>,
}

/// Builds the package from `binary` (a build of gate-user's smtp-gate)
/// and the workspace's deploy/ into `out_dir` (made if missing). The
/// staging tree is `out_dir/build/debian/smtp-gate`, made anew.
pub fn build(workspace: &Path, binary: &Path, out_dir: &Path) -> Result<Package> {
    let version = binary_version(binary)?;
    let arch = output("dpkg", &["--print-architecture"])?
        .trim()
        .to_string();
    let work = out_dir.join("build");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let root = work.join("debian").join(PACKAGE);
    let stage = Stage { root: root.clone() };

    // The binary, stripped as dh_strip does.
    let installed = stage.path(BINARY);
    stage.dir_of(&installed)?;
    let strip = [
        "--remove-section=.comment",
        "--remove-section=.note",
        "-o",
        path_str(&installed)?,
        path_str(binary)?,
    ];
    output("strip", &strip)?;
    set_mode(&installed, 0o755)?;

    let deploy = workspace.join("deploy");
    let (units, conffiles) = stage_deploy(&stage, &deploy)?;
    ensure!(!units.is_empty(), "{} holds no unit", deploy.display());

    stage_generated(&stage, &installed)?;
    stage_docs(&stage, workspace, &version)?;

    // DEBIAN/
    let control_dir = root.join("DEBIAN");
    fs::create_dir_all(&control_dir)?;
    let unit_words = units
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(" ");
    for (name, script) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        let path = control_dir.join(name);
        let script = script
            .replace("@UNITS@", &unit_words)
            .replace("@BINARY@", BINARY)
            .replace("@CONFIG_DIR@", CONFIG_DIR);
        fs::write(&path, script)?;
        set_mode(&path, 0o755)?;
    }
    let conffile_list: String = conffiles.iter().map(|c| format!("{c}\n")).collect();
    write_file(&control_dir.join("conffiles"), &conffile_list, 0o644)?;
    let md5sums = md5sums(&root, &conffiles)?;
    write_file(&control_dir.join("md5sums"), &md5sums, 0o644)?;
    let depends = format!("{}, adduser", shlib_depends(&work, &installed)?);
    let control = control(&version, &arch, &depends, installed_size_kib(&root)?);
    write_file(&control_dir.join("control"), &control, 0o644)?;
    dirs_0755(&root)?;

    let deb = out_dir.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    let epoch = source_date_epoch(workspace);
    let status = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zxz"])
        .arg(&root)
        .arg(&deb)
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .status()
        .context("cannot run dpkg-deb (Debian package dpkg)")?;
    if !status.success() {
        bail!("dpkg-deb --build {} failed ({status})", root.display());
    }
    Ok(Package {
        deb,
        version,
        conffiles,
        units,
    })
}

/// "0.1.0" from `smtp-gate --version` ("smtp-gate 0.1.0").
fn binary_version(binary: &Path) -> Result<String> {
    let said = output(path_str(binary)?, &["--version"])?;
    let version = said
        .trim()
        .strip_prefix("smtp-gate ")
        .with_context(|| format!("{} --version says {said:?}", binary.display()))?;
    ensure!(
        !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c)),
        "{version:?} is no Debian version"
    );
    Ok(version.to_string())
}

/// The staging tree: absolute paths of the installed system, under `root`.
struct Stage {
    root: PathBuf,
}

impl Stage {
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    fn dir_of(&self, path: &Path) -> Result<()> {
        let dir = path.parent().expect("a staged file has a directory");
        fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))
    }

    fn write(&self, absolute: &str, text: &str, mode: u32) -> Result<PathBuf> {
        let path = self.path(absolute);
        self.dir_of(&path)?;
        write_file(&path, text, mode)?;
        Ok(path)
    }

    /// Writes `text` gzipped (gzip -9n, as dh_compress) at `absolute`.gz.
    fn write_gz(&self, absolute: &str, text: &str) -> Result<PathBuf> {
        let path = self.write(absolute, text, 0o644)?;
        gzip(&path)
    }
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// gzip -9n: no name, no time stamp, so the same file compresses alike.
fn gzip(path: &Path) -> Result<PathBuf> {
    output("gzip", &["-9nf", path_str(path)?])?;
    let mut gz = path.as_os_str().to_owned();
    gz.push(".gz");
    let gz = PathBuf::from(gz);
    set_mode(&gz, 0o644)?;
    Ok(gz)
}

/// Every file of deploy/, relative, sorted.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in fs::read_dir(&at).with_context(|| format!("reading {}", at.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(dir)?.to_path_buf());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Places deploy/'s files; gives the units' names and the conffiles.
fn stage_deploy(stage: &Stage, deploy: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let (mut units, mut conffiles) = (Vec::new(), Vec::new());
    for rel in files_under(deploy)? {
        let text = fs::read_to_string(deploy.join(&rel))
            .with_context(|| format!("reading deploy/{}", rel.display()))?;
        let name = rel.to_string_lossy().into_owned();
        let top_level = rel.components().count() == 1;
        if top_level && (name.ends_with(".service") || name.ends_with(".socket")) {
            let packaged = packaged_unit(&text).with_context(|| format!("deploy/{name}"))?;
            stage.write(&format!("{UNIT_DIR}/{name}"), &packaged, 0o644)?;
            units.push(name);
        } else if top_level && (name.ends_with(".toml") || name == "users.example") {
            // The users file holds passwords: the example is installed as
            // the daemon wants the real one, readable by root only.
            let mode = if name.starts_with("users") {
                0o600
            } else {
                0o644
            };
            let conffile = format!("{CONFIG_DIR}/{name}");
            stage.write(&conffile, &text, mode)?;
            conffiles.push(conffile);
        } else if name == "README.md" {
            let doc = DEPLOY_DOC.strip_suffix(".gz").expect("gzipped");
            stage.write_gz(doc, &text)?;
        } else {
            stage.write(&format!("{DOC_DIR}/examples/{name}"), &text, 0o644)?;
        }
    }
    Ok((units, conffiles))
}

/// deploy/README.md, installed.
const DEPLOY_DOC: &str = "/usr/share/doc/smtp-gate/deploy.md.gz";

/// The note that replaces a unit's "# Install:" comment.
const UNIT_NOTE: &str = "\
# Installed by the Debian package smtp-gate, which neither enables nor starts
# it: /usr/share/doc/smtp-gate/README.Debian says what to set up first.
";

/// A unit of deploy/ as the package installs it: the binary in /usr/sbin,
/// the header comment's "Install:" steps (a source install's) replaced by
/// a note, and its comments pointing at the installed deploy/README.md. Fails if a setting still names /usr/local or no ExecStart=
/// starts the packaged binary.
pub fn packaged_unit(unit: &str) -> Result<String> {
    let mut packaged = String::new();
    let mut in_install_steps = false;
    let mut noted = false;
    for line in unit.lines() {
        if line.trim_end() == "# Install:" {
            in_install_steps = true;
            packaged.push_str(UNIT_NOTE);
            noted = true;
            continue;
        }
        if in_install_steps {
            // The steps are indented in the comment.
            if line.starts_with("#   ") {
                continue;
            }
            in_install_steps = false;
        }
        let line = line.replace(SOURCE_BINARY, BINARY);
        if line.starts_with('#') {
            // Where the package puts deploy/README.md.
            packaged.push_str(&line.replace("deploy/README.md", DEPLOY_DOC));
        } else {
            packaged.push_str(&line);
        }
        packaged.push('\n');
    }
    if !noted {
        packaged.insert_str(0, UNIT_NOTE);
    }
    let packaged = with_documentation(&packaged)?;
    let settings: Vec<&str> = packaged
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .collect();
    if let Some(local) = settings.iter().find(|l| l.contains("/usr/local/")) {
        bail!("a setting names /usr/local, which the package does not use: {local}");
    }
    ensure!(
        settings
            .iter()
            .any(|l| l.starts_with(&format!("ExecStart={BINARY} "))),
        "no ExecStart={BINARY} ..."
    );
    Ok(packaged)
}

/// The unit with a Documentation= line, if it has none: the man page of
/// the subcommand its ExecStart= runs, and README.Debian (`systemctl
/// status` shows them; `systemd-analyze verify` checks the man page).
fn with_documentation(unit: &str) -> Result<String> {
    if unit.lines().any(|l| l.starts_with("Documentation=")) {
        return Ok(unit.to_string());
    }
    let subcommand = unit
        .lines()
        .find_map(|l| l.strip_prefix(&format!("ExecStart={BINARY} ")))
        .and_then(|args| args.split_whitespace().next())
        .context("no ExecStart= runs a subcommand")?;
    let line =
        format!("Documentation=man:smtp-gate-{subcommand}(8) file://{DOC_DIR}/README.Debian\n");
    let mut documented = String::new();
    let mut added = false;
    for l in unit.lines() {
        documented.push_str(l);
        documented.push('\n');
        if !added && l.starts_with("Description=") {
            documented.push_str(&line);
            added = true;
        }
    }
    ensure!(
        added,
        "the unit has no Description= to put Documentation= after"
    );
    Ok(documented)
}

/// Man pages and completions, from the binary that goes in the package.
fn stage_generated(stage: &Stage, binary: &Path) -> Result<()> {
    let man_dir = stage.path(MAN_DIR);
    fs::create_dir_all(&man_dir)?;
    let pages = output(path_str(binary)?, &["generate", "man", path_str(&man_dir)?])?;
    let pages: Vec<&str> = pages.lines().collect();
    ensure!(
        pages.iter().any(|p| p.ends_with("/smtp-gate.8")) && pages.len() > 1,
        "smtp-gate generate man wrote {pages:?}"
    );
    for page in pages {
        gzip(Path::new(page))?;
    }
    let scratch = stage.root.with_file_name("completions");
    fs::create_dir_all(&scratch)?;
    for (shell, absolute) in COMPLETIONS {
        let written = output(
            path_str(binary)?,
            &["generate", "completions", shell, path_str(&scratch)?],
        )?;
        let written = Path::new(written.trim());
        let text = fs::read_to_string(written)
            .with_context(|| format!("reading the {shell} completions {}", written.display()))?;
        stage.write(absolute, &text, 0o644)?;
    }
    Ok(())
}

/// README.Debian, the READMEs, changelog and copyright.
fn stage_docs(stage: &Stage, workspace: &Path, version: &str) -> Result<()> {
    stage.write(&format!("{DOC_DIR}/README.Debian"), README_DEBIAN, 0o644)?;
    let readme = fs::read_to_string(workspace.join("README.md")).context("reading README.md")?;
    stage.write_gz(&format!("{DOC_DIR}/README.md"), &readme)?;
    stage.write_gz(
        &format!("{DOC_DIR}/changelog"),
        &changelog(workspace, version),
    )?;
    let crates = linked_crates(workspace)?
        .iter()
        .map(|c| format!(" {c}"))
        .collect::<Vec<_>>()
        .join("\n");
    let copyright = COPYRIGHT
        .replace("@CRATES@", &crates)
        .replace("@YEARS@", &commit_years(workspace));
    stage.write(&format!("{DOC_DIR}/copyright"), &copyright, 0o644)?;
    // The users example is 0600 on purpose: it is a users file, and those
    // hold passwords.
    stage.write(
        &format!("/usr/share/lintian/overrides/{PACKAGE}"),
        &format!("{PACKAGE}: non-standard-file-perm 0600 != 0644 [etc/smtp-gate/users.example]\n"),
        0o644,
    )?;
    Ok(())
}

/// "2025-2026": the years of the first and the last commit (else the
/// year of SOURCE_DATE_EPOCH).
fn commit_years(workspace: &Path) -> String {
    let dir = workspace.to_string_lossy();
    let years = output(
        "git",
        &["-C", &dir, "log", "--format=%cd", "--date=format:%Y"],
    )
    .unwrap_or_default();
    let (last, first) = (years.lines().next(), years.lines().last());
    match (first, last) {
        (Some(first), Some(last)) if first == last => first.to_string(),
        (Some(first), Some(last)) => format!("{first}-{last}"),
        _ => output(
            "date",
            &[
                "-u",
                "-d",
                &format!("@{}", source_date_epoch(workspace)),
                "+%Y",
            ],
        )
        .map(|y| y.trim().to_string())
        .unwrap_or_default(),
    }
}

/// SOURCE_DATE_EPOCH if set, else the time of the last commit, else now.
fn source_date_epoch(workspace: &Path) -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| {
            output(
                "git",
                &["-C", workspace.to_str()?, "log", "-1", "--format=%ct"],
            )
            .ok()
        })
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
}

/// A changelog of one entry: which commit the package was built from.
fn changelog(workspace: &Path, version: &str) -> String {
    let dir = workspace.to_string_lossy();
    let commit = output("git", &["-C", &dir, "rev-parse", "--short=12", "HEAD"])
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let dirty = output("git", &["-C", &dir, "status", "--porcelain"])
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
    let epoch = source_date_epoch(workspace);
    let date = output("date", &["-R", "-u", "-d", &format!("@{epoch}")])
        .map(|d| d.trim().to_string())
        .unwrap_or_else(|_| "Thu, 01 Jan 1970 00:00:00 +0000".to_string());
    let local = if dirty { " with local changes" } else { "" };
    format!(
        "{PACKAGE} ({version}) unstable; urgency=medium\n\n  \
         * Built by `cargo xtask deb` from commit {commit}{local}.\n\n \
         -- {MAINTAINER}  {date}\n"
    )
}

/// "name version (license)" of every crate linked into the binary: what
/// gate-user depends on for the host (normal dependencies, followed).
fn linked_crates(workspace: &Path) -> Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let host = output("rustc", &["-vV"])?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV names no host")?;
    let out = Command::new(&cargo)
        .current_dir(workspace)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--offline",
            "--filter-platform",
            &host,
        ])
        .output()
        .context("cannot run cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let packages: HashMap<&str, &serde_json::Value> = meta["packages"]
        .as_array()
        .context("no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: HashMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .context("no resolve graph")?
        .iter()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root = packages
        .iter()
        .find(|(_, p)| p["name"] == "gate-user")
        .map(|(id, _)| *id)
        .context("no gate-user in the workspace")?;
    let mut seen = BTreeSet::new();
    let mut pending = vec![root];
    while let Some(id) = pending.pop() {
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            let Some(dep_id) = dep["pkg"].as_str() else {
                continue;
            };
            if normal && seen.insert(dep_id) {
                pending.push(dep_id);
            }
        }
    }
    let mut crates: Vec<String> = seen
        .iter()
        .filter_map(|id| packages.get(id))
        // The workspace's own crates are the Files: * above.
        .filter(|p| !p["source"].is_null())
        .map(|p| {
            format!(
                "{} {} ({})",
                p["name"].as_str().unwrap_or("?"),
                p["version"].as_str().unwrap_or("?"),
                p["license"].as_str().unwrap_or("license not given")
            )
        })
        .collect();
    crates.sort();
    crates.dedup();
    ensure!(!crates.is_empty(), "gate-user links no crate?");
    Ok(crates)
}

/// DEBIAN/md5sums: every file but the conffiles (dpkg keeps their sums
/// itself), as dh_md5sums writes it.
fn md5sums(root: &Path, conffiles: &[String]) -> Result<String> {
    let mut files = Vec::new();
    for rel in files_under(root)? {
        if rel.starts_with("DEBIAN") {
            continue;
        }
        let absolute = format!("/{}", rel.display());
        if !conffiles.contains(&absolute) {
            files.push(rel.to_string_lossy().into_owned());
        }
    }
    let out = Command::new("md5sum")
        .current_dir(root)
        .args(&files)
        .output()
        .context("cannot run md5sum")?;
    ensure!(out.status.success(), "md5sum failed");
    Ok(String::from_utf8(out.stdout)?)
}

/// The Depends the binary's shared libraries need, from dpkg-shlibdeps
/// (dpkg-dev): e.g. "libc6 (>= 2.34), libgcc-s1 (>= 4.2)".
fn shlib_depends(work: &Path, binary: &Path) -> Result<String> {
    // dpkg-shlibdeps reads debian/control in the directory it runs in.
    let debian = work.join("debian");
    fs::write(
        debian.join("control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .current_dir(work)
        .arg("-O")
        .arg(format!("-e{}", binary.strip_prefix(work)?.display()))
        .output()
        .context("cannot run dpkg-shlibdeps (Debian package dpkg-dev)")?;
    ensure!(
        out.status.success(),
        "dpkg-shlibdeps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout)?;
    let depends = said
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps said {said:?}"))?;
    ensure!(depends.contains("libc6"), "no libc6 in {depends}");
    Ok(depends.to_string())
}

/// Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up,
/// and 1 per directory.
fn installed_size_kib(root: &Path) -> Result<u64> {
    let mut kib = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" && dir == root {
                continue;
            }
            let meta = entry.metadata()?;
            if meta.is_dir() {
                kib += 1;
                pending.push(entry.path());
            } else {
                kib += meta.len().div_ceil(1024);
            }
        }
    }
    Ok(kib)
}

fn dirs_0755(root: &Path) -> Result<()> {
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        set_mode(&dir, 0o755)?;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.metadata()?.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok(())
}

fn control(version: &str, arch: &str, depends: &str, installed_size: u64) -> String {
    format!(
        "Package: {PACKAGE}
Version: {version}
Architecture: {arch}
Maintainer: {MAINTAINER}
Installed-Size: {installed_size}
Depends: {depends}
Suggests: dovecot-core, postfix, redis-server
Section: mail
Priority: optional
Description: POP-before-SMTP enforced in the kernel (XDP/TC gate)
 smtp-gate lets a mail client open SMTP connections only for a while after
 it logged in to POP3 (or IMAP, through Dovecot's auth policy): an XDP
 program, or a TC classifier where XDP cannot attach, drops or resets
 every other SYN to the gated ports before the host's TCP stack sees it.
 Its own POP3 service grants on login, or Dovecot and Postfix through
 their policy interfaces.
 .
 Several hosts share grants over a Redis or Valkey grant bus: the POP3
 hosts publish them, the agent on each SMTP host applies them.
 .
 Neither service is enabled on installation: see README.Debian.
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_start_the_packaged_binary_without_source_install_steps() {
        let unit = "# The unit (deploy/README.md).\n#\n# Install:\n#   install -m 0755 x /usr/local/sbin/smtp-gate\n\
                    #   systemctl enable --now smtp-gate\n#\n# More.\n\n[Unit]\nDescription=d\n\n[Service]\n\
                    ExecStartPre=+/usr/local/sbin/smtp-gate attach --iface eth0\n\
                    ExecStart=/usr/local/sbin/smtp-gate serve --config /etc/smtp-gate/smtp-gate.toml\n";
        let packaged = packaged_unit(unit).unwrap();
        assert_eq!(
            packaged,
            format!(
                "# The unit ({DEPLOY_DOC}).\n#\n{UNIT_NOTE}#\n# More.\n\n[Unit]\n\
                 Description=d\n\
                 Documentation=man:smtp-gate-serve(8) file:///usr/share/doc/smtp-gate/README.Debian\n\
                 \n[Service]\n\
                 ExecStartPre=+/usr/sbin/smtp-gate attach --iface eth0\n\
                 ExecStart=/usr/sbin/smtp-gate serve --config /etc/smtp-gate/smtp-gate.toml\n"
            )
        );
        assert!(packaged_unit("[Service]\nExecStart=/usr/local/bin/other\n").is_err());
        assert!(packaged_unit("[Service]\nExecStart=/bin/true\n").is_err());
    }

    #[test]
    fn the_shipped_units_can_be_packaged() {
        for unit in ["smtp-gate.service", "smtp-gate-agent.service"] {
            let text = fs::read_to_string(workspace().join("deploy").join(unit)).unwrap();
            let packaged = packaged_unit(&text).unwrap();
            assert!(!packaged.contains("/usr/local/"), "{unit}: {packaged}");
            assert!(packaged.contains(UNIT_NOTE), "{unit}");
            assert!(packaged.contains(DEPLOY_DOC), "{unit}");
            // The memory bounds (deploy/'s units, attack review) ship.
            for bound in ["\nMemoryHigh=", "\nMemoryMax="] {
                assert!(packaged.contains(bound), "{unit}: no {bound}");
            }
        }
    }
}
