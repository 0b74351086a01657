//! The asking side: the API's [`UnitRelay`] in fleetd, answered by this machine itself or by another
//! over the gossip request channel.

use super::*;

/// The API's [`UnitRelay`] in fleetd: this machine answers itself, others through gossip.
pub struct GossipRelay {
    local: MachineId,
    gossip: Option<GossipHandle>,
    responder: Arc<Responder>,
}

impl GossipRelay {
    /// Relays from machine `local` over `gossip` (without gossip only this machine can be asked);
    /// `responder` answers what concerns this machine.
    pub fn new(
        local: MachineId,
        gossip: Option<GossipHandle>,
        responder: Arc<Responder>,
    ) -> GossipRelay {
        GossipRelay {
            local,
            gossip,
            responder,
        }
    }

    async fn exchange(
        &self,
        machine: &MachineId,
        request: Request,
    ) -> Result<Response, RelayError> {
        if *machine == self.local {
            return Ok(self.responder.answer(&request).await);
        }
        let Some(gossip) = &self.gossip else {
            return Err(RelayError::Unreachable {
                machine: machine.clone(),
                reason: "gossip is not running on this machine".into(),
            });
        };
        let peer = machine.clone();
        let bytes = gossip
            .request(&peer, request.encode())
            .await
            .map_err(|e| match e {
                RequestError::Timeout(_) => RelayError::Timeout {
                    machine: machine.clone(),
                },
                RequestError::Remote { message, .. } => RelayError::Failed {
                    machine: machine.clone(),
                    message,
                },
                e => RelayError::Unreachable {
                    machine: machine.clone(),
                    reason: e.to_string(),
                },
            })?;
        Response::decode(&bytes).map_err(|e| RelayError::Failed {
            machine: machine.clone(),
            message: e.to_string(),
        })
    }
}

impl UnitRelay for GossipRelay {
    fn ask<'a>(&'a self, machine: &'a MachineId, query: UnitQuery) -> RelayFuture<'a> {
        Box::pin(async move {
            let failed = |message: String| RelayError::Failed {
                machine: machine.clone(),
                message,
            };
            let request = Request::from(query);
            match (&request, self.exchange(machine, request.clone()).await?) {
                (Request::Status { .. }, Response::Status { text, exit_code }) => Ok(UnitAnswer {
                    text,
                    cursor: None,
                    exit_code: Some(exit_code),
                }),
                (Request::Journal { .. }, Response::Journal { text, cursor }) => Ok(UnitAnswer {
                    text,
                    cursor,
                    exit_code: None,
                }),
                (Request::Restart { .. }, Response::Restart { text, exit_code }) => {
                    Ok(UnitAnswer {
                        text,
                        cursor: None,
                        exit_code: Some(exit_code),
                    })
                }
                (_, Response::Error(e)) => Err(failed(e)),
                (_, other) => Err(failed(format!(
                    "answered with the wrong kind of response: {other:?}"
                ))),
            }
        })
    }

    fn set_metadata<'a>(
        &'a self,
        machine: &'a MachineId,
        changes: Vec<MetadataChange>,
    ) -> MetadataFuture<'a> {
        Box::pin(async move {
            let failed = |message: String| RelayError::Failed {
                machine: machine.clone(),
                message,
            };
            match self
                .exchange(machine, Request::SetMetadata { changes })
                .await?
            {
                Response::MetadataSet => Ok(()),
                Response::Error(e) => Err(failed(e)),
                other => Err(failed(format!(
                    "answered with the wrong kind of response: {other:?}"
                ))),
            }
        })
    }
}
