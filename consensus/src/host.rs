//! The order in which a host applies the core's actions, shared by the node's driver and the
//! simulator so that the simulator checks the order the node really uses.
//!
//! A host can often answer a request at once (the mempool has a payload, the batches are
//! already stored). Such an answer must not re-enter the core while the rest of the current
//! action list is still unapplied: the inner event's actions (a newer safety record among them)
//! would be applied first, and an older `PersistSafety` later in the outer list would then
//! overwrite the newer one. A [`Pump`] therefore queues every answer behind the current list.

use crate::core::{Action, Event};
use std::collections::VecDeque;

/// What the host does next.
// A step lives for one match arm and is never stored: boxing its event would only add an
// allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Step {
    /// Feed this event to the core and hand its actions to [`Pump::push_actions`].
    Handle(Event),
    /// Apply this action; an answer the host has at once goes to [`Pump::answer`].
    Apply(Action),
    /// Every action of one event has been applied: make what was batched durable.
    EndOfActions,
}

/// Sequences events and actions for one host: each event's whole action list is applied, in
/// order, before the next event (an answer included) reaches the core.
#[derive(Debug, Default)]
pub struct Pump {
    /// Action lists not yet fully applied, innermost last (more than one only in the mutant).
    lists: Vec<VecDeque<Action>>,
    /// Events waiting for the current list to end.
    events: VecDeque<Event>,
}

impl Pump {
    /// A pump that starts with `first`.
    pub fn new(first: Event) -> Self {
        Self {
            lists: Vec::new(),
            events: VecDeque::from([first]),
        }
    }

    /// The actions the core returned for the last [`Step::Handle`].
    pub fn push_actions(&mut self, actions: Vec<Action>) {
        self.lists.push(actions.into());
    }

    /// An answer the host produced while applying an action: handled after the current list.
    pub fn answer(&mut self, event: Event) {
        #[cfg(feature = "mutant-reentrant-answers")]
        {
            // Mutant: the answer re-enters the core before the rest of the current list.
            self.events.push_front(event);
            return;
        }
        #[allow(unreachable_code)]
        self.events.push_back(event);
    }

    /// The next step, `None` once every event and action is done.
    pub fn next_step(&mut self) -> Option<Step> {
        #[cfg(feature = "mutant-reentrant-answers")]
        if !self.lists.is_empty()
            && let Some(event) = self.events.pop_front()
        {
            return Some(Step::Handle(event));
        }
        if let Some(list) = self.lists.last_mut() {
            return Some(match list.pop_front() {
                Some(action) => Step::Apply(action),
                None => {
                    self.lists.pop();
                    Step::EndOfActions
                }
            });
        }
        self.events.pop_front().map(Step::Handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::BlockId;

    fn timer(round: u64) -> Action {
        Action::SetTimer {
            round,
            duration_ms: 1,
        }
    }

    #[test]
    fn an_answer_waits_for_the_rest_of_the_list() {
        let first = Event::BatchesAvailable {
            block_id: BlockId([1; 32]),
        };
        let mut pump = Pump::new(first);
        let mut seen = Vec::new();
        while let Some(step) = pump.next_step() {
            match step {
                Step::Handle(Event::BatchesAvailable { block_id }) if block_id.0[0] == 1 => {
                    seen.push("handle first".to_string());
                    pump.push_actions(vec![timer(1), timer(2)]);
                }
                Step::Handle(_) => {
                    seen.push("handle answer".to_string());
                    pump.push_actions(vec![timer(3)]);
                }
                Step::Apply(Action::SetTimer { round, .. }) => {
                    seen.push(format!("apply {round}"));
                    if round == 1 {
                        pump.answer(Event::BatchesAvailable {
                            block_id: BlockId([2; 32]),
                        });
                    }
                }
                Step::Apply(_) => unreachable!("only timers here"),
                Step::EndOfActions => seen.push("end".to_string()),
            }
        }
        let expected = [
            "handle first",
            "apply 1",
            "apply 2",
            "end",
            "handle answer",
            "apply 3",
            "end",
        ];
        #[cfg(not(feature = "mutant-reentrant-answers"))]
        assert_eq!(seen, expected);
        #[cfg(feature = "mutant-reentrant-answers")]
        assert_ne!(seen, expected);
    }
}
