//! `strata cluster init-ca` and `strata cluster issue`: the certificates of the peer endpoint's
//! mutual TLS (formats in `cluster::certs`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cluster::certs;

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Make the cluster's certificate authority once: DIR/ca.pem and DIR/ca.key (keep the key
    /// safe: whoever has it can join the cluster).
    InitCa {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Sign a certificate naming node N: NODEDIR/ca.pem, node.pem and node.key, for
    /// `strata serve --node-id N --peer-tls-dir NODEDIR`.
    Issue {
        /// The directory `init-ca` wrote.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[arg(long, value_name = "N")]
        node_id: i32,
        #[arg(long, value_name = "NODEDIR")]
        out: PathBuf,
    },
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::InitCa { out } => {
            certs::init_ca(&out)?;
            println!(
                "cluster CA written to {}: {} and {} (keep the key private)",
                out.display(),
                certs::CA_CERT,
                certs::CA_KEY
            );
        }
        ClusterCommand::Issue { ca, node_id, out } => {
            certs::issue(&ca, node_id, &out)?;
            println!(
                "certificate of node {node_id} written to {}: start it with --node-id {node_id} --peer-tls-dir {}",
                out.display(),
                out.display()
            );
        }
    }
    Ok(())
}
