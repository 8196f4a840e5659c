//! Messages about one account: opening it and changing its status. Each
//! answers once its record is durable.

use super::{Answer, ReplyTo, RunningShard};
use crate::account::{Account, AccountStatus};
use crate::ids::AccountId;
use crate::record::{Applied, Record};
use crate::LedgerError;

impl RunningShard {
    pub(super) fn open_account(&mut self, account: Account, to: ReplyTo) {
        let answer = self.answer_to(to, Answer::Account);
        let Some(answer) = self.refuse_if_poisoned(answer) else { return };
        match self.state.open_account(account) {
            Err(rejection) => answer(Err(LedgerError::Rejected(rejection))),
            Ok((account, None)) => answer(Ok(account)),
            Ok((account, Some(event))) => {
                let record = Record::Applied(Applied { events: vec![event], ..Default::default() });
                self.journal_then_reply(record, answer, account);
            }
        }
    }

    pub(super) fn set_status(&mut self, account_id: AccountId, status: AccountStatus, to: ReplyTo) {
        let answer = self.answer_to(to, Answer::Account);
        let Some(answer) = self.refuse_if_poisoned(answer) else { return };
        let now_ms = self.shared.clock.now_ms();
        match self.state.set_status(account_id, status, now_ms) {
            Err(rejection) => answer(Err(LedgerError::Rejected(rejection))),
            Ok((account, None)) => answer(Ok(account)),
            Ok((account, Some(event))) => {
                let record =
                    Record::Applied(Applied { events: vec![event], at_ms: now_ms, ..Default::default() });
                self.journal_then_reply(record, answer, account);
            }
        }
    }
}
