//! The live domain: sessions built only through their checking constructor, and the service's
//! own error cases. No gRPC, no SQL.

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    names,
    validate::{Violations, text},
};

/// Live's own failures; everything generic is the kit's [`KitError`].
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// NOT_FOUND / SESSION_NOT_FOUND: no session by that name that the caller co-hosts (another
    /// partner's session answers the same).
    #[error("session not found")]
    SessionNotFound,
    #[error(transparent)]
    Kit(#[from] KitError),
}

/// Where a session stands: SCHEDULED → LIVE → ENDED, or CANCELLED from SCHEDULED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Scheduled,
    Live,
    Ended,
    Cancelled,
}

/// A session as the service keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub title: String,
    /// The co-hosting partners, the creator included; only they see and change the session.
    pub hosts: Vec<PartnerId>,
    /// The hosting store, `(partner, store)`; its partner is one of the hosts.
    pub store: Option<(PartnerId, String)>,
    pub stream_url: String,
    pub scheduled_start_millis: i64,
    pub state: SessionState,
    pub created_by: PartnerId,
}

/// What a partner asks for when it schedules a session, before it is checked.
pub struct SessionDraft<'a> {
    pub title: &'a str,
    pub hosts: &'a [String],
    pub store: &'a str,
    pub stream_url: &'a str,
    pub scheduled_start: Result<i64, String>,
}

/// At most this many co-hosts (a brand and a mall typically; a joint festival a few more).
pub const MAX_HOSTS: usize = 8;

impl Session {
    /// Checks a draft from `caller` at `now`: every problem is reported at once, with the
    /// field (under `session.`) it concerns. The caller is always a host.
    pub fn schedule(
        caller: &PartnerId,
        draft: &SessionDraft<'_>,
        now: i64,
    ) -> Result<Self, KitError> {
        let mut v = Violations::default();
        let title = v.check("session.title", text(draft.title, true, 100));
        let mut hosts = vec![caller.clone()];
        v.partners("session.hosts", draft.hosts, MAX_HOSTS, &mut hosts);
        let store = if draft.store.is_empty() {
            None
        } else {
            match names::parse(draft.store, "partners/{partner}/stores/{store}") {
                Ok([partner, store]) if hosts.iter().any(|h| h.as_str() == partner) => {
                    Some((PartnerId::new(partner), store.to_owned()))
                }
                Ok(_) => {
                    v.add("session.store", "must be a store of one of the hosts");
                    None
                }
                Err(e) => {
                    v.add("session.store", e);
                    None
                }
            }
        };
        let stream_url = v.check("session.stream_url", stream_url(draft.stream_url));
        let start = v.check(
            "session.scheduled_start_time",
            draft.scheduled_start.clone().and_then(|at| {
                if at > now {
                    Ok(at)
                } else {
                    Err("must be in the future".into())
                }
            }),
        );
        v.finish()?;
        let (Some(title), Some(stream_url), Some(scheduled_start_millis)) =
            (title, stream_url, start)
        else {
            return Err(KitError::invalid("session", "required"));
        };
        Ok(Self {
            id: uuid::Uuid::now_v7().simple().to_string(),
            title,
            hosts,
            store,
            stream_url,
            scheduled_start_millis,
            state: SessionState::Scheduled,
            created_by: caller.clone(),
        })
    }

    /// Whether `partner` co-hosts the session (and so may see and change it).
    pub fn hosted_by(&self, partner: &str) -> bool {
        self.hosts.iter().any(|h| h.as_str() == partner)
    }

    /// The session's store as a name, "partners/{partner}/stores/{store}".
    pub fn store_name(&self) -> Option<String> {
        self.store
            .as_ref()
            .map(|(p, id)| names::format("partners/{partner}/stores/{store}", &[p, id]))
    }

    /// Whether a caller sees the session: a co-host — and, with a store token (`own_store`),
    /// only a session in that store, as a store acts only within itself.
    pub fn visible_to(&self, partner: &str, own_store: Option<&str>) -> bool {
        self.hosted_by(partner)
            && own_store.is_none_or(|own| self.store_name().as_deref() == Some(own))
    }
}

/// Where viewers' players fetch the stream: an https or rtmp(s) URL, or empty until it is known.
fn stream_url(url: &str) -> Result<String, String> {
    let url = text(url, false, 500)?;
    if url.is_empty()
        || ["https://", "rtmp://", "rtmps://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
    {
        Ok(url)
    } else {
        Err("an https://, rtmp:// or rtmps:// URL".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft<'a>(hosts: &'a [String], store: &'a str, start: i64) -> SessionDraft<'a> {
        SessionDraft {
            title: "Double 12 at the flagship",
            hosts,
            store,
            stream_url: "https://cdn.example/live/1.m3u8",
            scheduled_start: Ok(start),
        }
    }

    #[test]
    fn the_creator_is_always_a_host_and_a_store_belongs_to_a_host() {
        let me = PartnerId::new("brand-a");
        let hosts = ["partners/mall-b".to_owned()];
        let s =
            Session::schedule(&me, &draft(&hosts, "partners/mall-b/stores/sh01", 10), 1).unwrap();
        assert_eq!(s.hosts, [me.clone(), PartnerId::new("mall-b")]);
        assert_eq!(s.state, SessionState::Scheduled);
        assert!(s.hosted_by("mall-b") && !s.hosted_by("brand-x"));
        let e = Session::schedule(&me, &draft(&hosts, "partners/brand-x/stores/sh01", 10), 1)
            .unwrap_err();
        assert_eq!(
            lianyu_kit::ServiceError::field_violations(&e)[0].field,
            "session.store"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let me = PartnerId::new("brand-a");
        let hosts = ["mall-b".to_owned()];
        let mut d = draft(&hosts, "", 1);
        d.title = "";
        d.stream_url = "ftp://x";
        let e = Session::schedule(&me, &d, 5).unwrap_err();
        let fields: Vec<_> = lianyu_kit::ServiceError::field_violations(&e)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            [
                "session.title",
                "session.hosts[0]",
                "session.stream_url",
                "session.scheduled_start_time"
            ]
        );
    }
}
