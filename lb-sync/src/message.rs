//! Message payloads.

use crate::record::{FlowRecord, RECORD_LEN};

/// What the nodes of a pair tell each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Sent at start and every second. `want_full`: the sender has no
    /// complete copy of the receiver's flows and asks for a full transfer;
    /// `in_sync`: the sender holds a complete copy.
    Hello { want_full: bool, in_sync: bool },
    /// Live changes, or part of full transfer `bulk`.
    Flows {
        bulk: Option<u32>,
        records: Vec<FlowRecord>,
    },
    /// End of full transfer `transfer_id`, which carried `records` in all.
    BulkDone { transfer_id: u32, records: u64 },
    /// The receiver installed the `Flows` message numbered `seq`.
    Ack { seq: u64 },
}

pub(crate) const FLOWS_HEADER: usize = 1 + 4 + 2;

const HELLO: u8 = 1;
const FLOWS: u8 = 2;
const BULK_DONE: u8 = 3;
const ACK: u8 = 4;

impl Message {
    pub(crate) fn type_code(&self) -> u8 {
        match self {
            Message::Hello { .. } => HELLO,
            Message::Flows { .. } => FLOWS,
            Message::BulkDone { .. } => BULK_DONE,
            Message::Ack { .. } => ACK,
        }
    }

    pub(crate) fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            Message::Hello { want_full, in_sync } => {
                out.push(u8::from(*want_full) | u8::from(*in_sync) << 1);
            }
            Message::Flows { bulk, records } => {
                out.push(u8::from(bulk.is_some()));
                out.extend_from_slice(&bulk.unwrap_or(0).to_be_bytes());
                let count = u16::try_from(records.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                for record in records.iter().take(usize::from(count)) {
                    record.encode(out);
                }
            }
            Message::BulkDone {
                transfer_id,
                records,
            } => {
                out.extend_from_slice(&transfer_id.to_be_bytes());
                out.extend_from_slice(&records.to_be_bytes());
            }
            Message::Ack { seq } => out.extend_from_slice(&seq.to_be_bytes()),
        }
    }

    /// The message of type `code` in exactly `payload`, if it makes one.
    pub(crate) fn decode(code: u8, payload: &[u8]) -> Option<Self> {
        match code {
            HELLO => match payload {
                [flags] if flags & !0b11 == 0 => Some(Message::Hello {
                    want_full: flags & 1 != 0,
                    in_sync: flags & 2 != 0,
                }),
                _ => None,
            },
            FLOWS => decode_flows(payload),
            BULK_DONE => {
                let bytes: &[u8; 12] = payload.try_into().ok()?;
                Some(Message::BulkDone {
                    transfer_id: u32::from_be_bytes(bytes[..4].try_into().ok()?),
                    records: u64::from_be_bytes(bytes[4..].try_into().ok()?),
                })
            }
            ACK => Some(Message::Ack {
                seq: u64::from_be_bytes(payload.try_into().ok()?),
            }),
            _ => None,
        }
    }
}

fn decode_flows(payload: &[u8]) -> Option<Message> {
    let header = payload.get(..FLOWS_HEADER)?;
    let id = u32::from_be_bytes(header[1..5].try_into().ok()?);
    let bulk = match header[0] {
        0 if id == 0 => None,
        1 => Some(id),
        _ => return None,
    };
    let count = usize::from(u16::from_be_bytes(header[5..7].try_into().ok()?));
    let body = &payload[FLOWS_HEADER..];
    if body.len() != count * RECORD_LEN {
        return None;
    }
    let records = body
        .chunks_exact(RECORD_LEN)
        .map(FlowRecord::decode)
        .collect::<Option<Vec<_>>>()?;
    Some(Message::Flows { bulk, records })
}
