//! The binary's log as events: with `TOKEN_REFRESHER__LOG__FORMAT=json` each line on standard
//! error is one JSON object whose `message` names the event and whose other members are its
//! fields.

use serde_json::Value;

/// The JSON log events of one run, in the order they were written.
#[derive(Debug)]
pub struct Events(Vec<Value>);

impl Events {
    /// The events in `text`; lines that are not JSON are passed over.
    pub fn parse(text: &str) -> Events {
        Events(
            text.lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect(),
        )
    }

    /// The events named `name`.
    pub fn named(&self, name: &str) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|event| event["message"] == name)
            .collect()
    }

    /// How many events are named `name`.
    pub fn count(&self, name: &str) -> usize {
        self.named(name).len()
    }
}
