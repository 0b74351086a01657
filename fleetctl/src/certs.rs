//! `fleetctl gen-certs`: mints the files of gossip's mutual TLS (a cluster CA, and machine
//! certificates signed by it) with [`fleet_gossip_quic::tls`]. A machine certificate names its
//! machine (a `urn:fleet:machine:<ID>` URI and the common name), and gossip holds every peer to the
//! machine its certificate names. The one verb that works on local files only: it never contacts
//! fleetd.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use fleet_gossip_quic::tls::{self, TlsConfig};

use super::args::GenCertsArgs;

/// File name of the CA certificate in a CA directory.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA private key in a CA directory.
pub const CA_KEY: &str = "ca.key";

/// The files `gen-certs` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Minted {
    /// A new cluster CA.
    Ca {
        /// Its certificate.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// A machine certificate.
    Machine {
        /// The machine ID (the certificate's common name).
        machine_id: String,
        /// The CA certificate that signed it (what the machine's `gossip_ca_file` names).
        ca_cert: PathBuf,
        /// The machine's certificate.
        cert: PathBuf,
        /// The machine's private key.
        key: PathBuf,
    },
}

/// Runs `gen-certs`: mints what `args` asks for and describes it on `out`.
pub fn gen_certs(args: &GenCertsArgs, out: &mut dyn Write) -> Result<Minted> {
    let minted = mint(args)?;
    match &minted {
        Minted::Ca { cert, key } => writeln!(
            out,
            "Cluster CA: certificate {}, private key {}.\n\
             Copy the certificate to every machine (gossip_ca_file); keep the key off the machines.\n\
             Next, for each machine: fleetctl gen-certs --dir DIR --ca-dir {} --machine-id ID",
            cert.display(),
            key.display(),
            cert.parent().unwrap_or(Path::new(".")).display(),
        )?,
        Minted::Machine {
            machine_id,
            ca_cert,
            cert,
            key,
        } => writeln!(
            out,
            "Certificate of machine {machine_id}: {}, private key {} (signed by {}).\n\
             In that machine's fleet.conf (paths where you copy the files to):\n\
             gossip_ca_file={}\ngossip_cert_file={}\ngossip_key_file={}",
            cert.display(),
            key.display(),
            ca_cert.display(),
            ca_cert.display(),
            cert.display(),
            key.display(),
        )?,
    }
    Ok(minted)
}

fn mint(args: &GenCertsArgs) -> Result<Minted> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    if args.ca {
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        prepare(&[&cert], &key, args.force)?;
        tls::mint_ca(&cert, &key)
            .map_err(|e| discard(&[&cert, &key], e))
            .context("minting the cluster CA")?;
        return Ok(Minted::Ca { cert, key });
    }
    let Some(id) = args.machine_id.as_deref() else {
        bail!("gen-certs needs --ca or --machine-id ID");
    };
    let id = fleet_sched::MachineId::parse(id.trim())
        .map_err(|e| anyhow!("invalid --machine-id {id:?}: {e}"))?;
    let id = id.as_str().to_string();
    let ca_dir = args.ca_dir.as_deref().unwrap_or(dir);
    let (ca_cert, ca_key) = (ca_dir.join(CA_CERT), ca_dir.join(CA_KEY));
    for f in [&ca_cert, &ca_key] {
        if !f.exists() {
            bail!(
                "no cluster CA in {}: {} is missing (mint a CA with `fleetctl gen-certs --dir {} --ca`)",
                ca_dir.display(),
                f.display(),
                ca_dir.display()
            );
        }
    }
    let (cert, key) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
    prepare(&[&cert], &key, args.force)?;
    tls::mint_machine_cert(&ca_cert, &ca_key, &id, &cert, &key)
        .map_err(|e| discard(&[&cert, &key], e))
        .with_context(|| format!("minting the certificate of machine {id}"))?;
    // The files must make a TLS configuration gossip accepts (e.g. a CA key that is not the CA
    // certificate's would be caught by peers only; this catches a broken CA file now).
    tls::quic_configs(&TlsConfig::Mutual {
        ca_cert: ca_cert.clone(),
        cert: cert.clone(),
        key: key.clone(),
    })
    .with_context(|| format!("checking the minted files {}", cert.display()))?;
    Ok(Minted::Machine {
        machine_id: id,
        ca_cert,
        cert,
        key,
    })
}

/// Removes what a failed mint left behind (an empty or partial file would block the next attempt).
fn discard<E>(files: &[&Path], e: E) -> E {
    for f in files {
        let _ = std::fs::remove_file(f);
    }
    e
}

/// Refuses to overwrite files unless `force`, and creates `key` empty with mode 0600 first, so the
/// private key is never readable by others, not even while it is written.
fn prepare(files: &[&Path], key: &Path, force: bool) -> Result<()> {
    if !force {
        for f in files.iter().chain([&key]) {
            if f.exists() {
                bail!(
                    "{} already exists: not overwritten (use --force to replace it)",
                    f.display()
                );
            }
        }
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        opts.open(key)
            .with_context(|| format!("cannot create {}", key.display()))?;
        // An existing file (--force) keeps its mode: tighten it.
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict the mode of {}", key.display()))?;
    }
    #[cfg(not(unix))]
    opts.open(key)
        .with_context(|| format!("cannot create {}", key.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use clap::Parser;

    fn args(line: &[&str]) -> GenCertsArgs {
        let mut full = vec!["fleetctl", "gen-certs"];
        full.extend_from_slice(line);
        match Cli::try_parse_from(full).unwrap().command {
            Some(Command::GenCerts(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    fn run(line: &[&str]) -> Result<(Minted, String)> {
        let mut out = Vec::new();
        let m = gen_certs(&args(line), &mut out)?;
        Ok((m, String::from_utf8(out).unwrap()))
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_ca_and_a_machine_certificate_make_a_mutual_tls_configuration() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        let m = tmp.path().join("m");
        let (minted, text) = run(&["--dir", ca.to_str().unwrap(), "--ca"]).unwrap();
        assert_eq!(
            minted,
            Minted::Ca {
                cert: ca.join("ca.pem"),
                key: ca.join("ca.key")
            }
        );
        assert!(text.contains("--machine-id ID"), "{text}");
        let (minted, text) = run(&[
            "--dir",
            m.to_str().unwrap(),
            "--ca-dir",
            ca.to_str().unwrap(),
            "--machine-id",
            "abc123",
        ])
        .unwrap();
        let Minted::Machine { cert, key, .. } = &minted else {
            panic!("{minted:?}")
        };
        assert_eq!(cert, &m.join("abc123.pem"));
        assert!(
            text.contains(&format!("gossip_key_file={}", key.display())),
            "{text}"
        );
        #[cfg(unix)]
        {
            assert_eq!(mode(&ca.join("ca.key")), 0o600);
            assert_eq!(mode(key), 0o600);
        }
        let mutual = TlsConfig::Mutual {
            ca_cert: ca.join("ca.pem"),
            cert: cert.clone(),
            key: key.clone(),
        };
        tls::quic_configs(&mutual).unwrap();
        // The certificate names the machine (gossip binds a peer to it).
        tls::check_own_certificate(&mutual, "abc123").unwrap();
        assert!(tls::check_own_certificate(&mutual, "abc124").is_err());
        // --ca-dir defaults to --dir.
        let (minted, _) = run(&["--dir", ca.to_str().unwrap(), "--machine-id", "m2"]).unwrap();
        assert!(matches!(minted, Minted::Machine { ca_cert, .. } if ca_cert == ca.join("ca.pem")));
    }

    #[test]
    fn existing_files_are_kept_unless_forced() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_str().unwrap();
        run(&["--dir", d, "--ca"]).unwrap();
        let before = std::fs::read(tmp.path().join("ca.pem")).unwrap();
        let err = run(&["--dir", d, "--ca"]).unwrap_err().to_string();
        assert!(err.contains("ca.pem already exists"), "{err}");
        assert_eq!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), before);
        run(&["--dir", d, "--ca", "--force"]).unwrap();
        assert_ne!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), before);
        run(&["--dir", d, "--machine-id", "m1"]).unwrap();
        let err = run(&["--dir", d, "--machine-id", "m1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("m1.pem already exists"), "{err}");
    }

    #[test]
    fn a_missing_ca_or_a_bad_machine_id_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().to_str().unwrap();
        let err = format!(
            "{:#}",
            run(&["--dir", d, "--machine-id", "m1"]).unwrap_err()
        );
        assert!(
            err.contains("ca.pem is missing") && err.contains("--ca"),
            "{err}"
        );
        run(&["--dir", d, "--ca"]).unwrap();
        let err = format!(
            "{:#}",
            run(&["--dir", d, "--machine-id", "../etc/x"]).unwrap_err()
        );
        assert!(err.contains("invalid --machine-id"), "{err}");
        assert!(!tmp.path().join("../etc").join("x.pem").exists());
    }

    #[test]
    fn the_command_line_needs_exactly_one_of_ca_and_machine_id() {
        for line in [
            &["fleetctl", "gen-certs", "--dir", "x"][..],
            &["fleetctl", "gen-certs", "--ca"],
            &[
                "fleetctl",
                "gen-certs",
                "--dir",
                "x",
                "--ca",
                "--machine-id",
                "m",
            ],
            &[
                "fleetctl",
                "gen-certs",
                "--dir",
                "x",
                "--ca",
                "--ca-dir",
                "y",
            ],
            &["fleetctl", "gen-certs", "--dir", "x", "--ca-dir", "y"],
        ] {
            assert!(Cli::try_parse_from(line).is_err(), "{line:?} was accepted");
        }
    }
}
