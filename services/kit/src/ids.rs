//! Typed ids: one small macro makes a newtype per kind of id, so a partner-scoped member id can
//! never be passed where a mesh member id is expected (nor a store id where a partner id is).
//! The mesh-wide kinds every service handles are defined here; a service defines its own with
//! [`crate::id_type!`].
//!
//! A scoped id where a mesh id is expected does not compile:
//!
//! ```compile_fail
//! use lianyu_kit::ids::{MeshMemberId, ScopedMemberId};
//! fn erase(_member: &MeshMemberId) {}
//! erase(&ScopedMemberId::new("m1"));
//! ```
//!
//! and neither does plain text:
//!
//! ```compile_fail
//! use lianyu_kit::ids::MeshMemberId;
//! fn erase(_member: &MeshMemberId) {}
//! erase(&"m1".to_owned());
//! ```

/// Defines a string id newtype: `id_type!(/// docs\n PartnerId);`. It converts from and to
/// `String` explicitly, shows as its value, and stores through sea-orm as a string column.
#[macro_export]
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(String);

        impl $name {
            /// Wraps a value already checked (read from storage, or parsed from a name).
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        // Reading an id as text is always fine (queries, names, logs of ids); it is making
        // one from text that is explicit (`new`), so text never becomes an id by accident.
        impl ::std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl ::std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl ::std::convert::AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl ::std::convert::From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl ::std::convert::From<$name> for ::sea_orm::Value {
            fn from(id: $name) -> ::sea_orm::Value {
                ::sea_orm::Value::from(id.0)
            }
        }
    };
}

id_type!(
    /// A partner: the last segment of "partners/{partner}".
    PartnerId
);
id_type!(
    /// A store of a partner: the last segment of "partners/{partner}/stores/{store}".
    StoreId
);
id_type!(
    /// A person in the mesh. Internal: never shown to a partner.
    MeshMemberId
);
id_type!(
    /// A person as one partner knows them: the last segment of "members/{partner_scoped_id}".
    /// Meaningful only together with that partner.
    ScopedMemberId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_show_and_convert_as_their_value() {
        let id = ScopedMemberId::new("m123");
        assert_eq!(id.to_string(), "m123");
        assert_eq!(id.as_str(), "m123");
        assert_eq!(String::from(id.clone()), "m123");
        assert_eq!(
            sea_orm::Value::from(id),
            sea_orm::Value::from("m123".to_owned())
        );
    }
}
