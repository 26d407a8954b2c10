//! The cache key: what an inference means, not how the viewer spelled it.
//!
//! The plan has already resolved the request into the model, the server and a
//! canonical [`Layout`] (config order, UIDs, WADO-RS paths), so two requests
//! that assign the same data in another order or another browser encoding plan
//! to the same layout and share a key. The model's and the server's `uri` are in
//! it, so a changed config never serves an answer from the old one.

use std::fmt;

use serde_json::{json, Value};

use crate::payload::Layout;
use crate::plan::Plan;

/// SHA-256 of the stable serialisation of a plan.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    /// The key of `plan`.
    pub fn of(plan: &Plan) -> Key {
        let m = &plan.model;
        let s = &plan.server;
        // A versioned JSON array: serde_json writes it the same way every time,
        // and strings are quoted, so no two plans can run together into one text.
        let text = json!([
            "model-proxy cache key 1",
            m.id,
            m.uri,
            m.task.as_str(),
            if m.multipart { "multipart" } else { "zhiva" },
            s.id,
            s.uri,
            layout(&plan.layout),
        ])
        .to_string();
        let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        Key(k)
    }

    /// A key from its bytes, for tests.
    #[cfg(test)]
    pub fn from_bytes(b: [u8; 32]) -> Key {
        Key(b)
    }

    /// Lower-case hex: the entry's file name.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", &self.hex()[..12])
    }
}

fn layout(l: &Layout) -> Value {
    match l {
        Layout::List(paths) => json!(["list", paths]),
        Layout::One(path) => json!(["one", path]),
        Layout::Keyed(entries) => {
            let inner: Vec<Value> = entries.iter().map(|(k, l)| json!([k, layout(l)])).collect();
            json!(["keyed", inner])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::routing::{route, Route};

    const M: &str = "4d9508dd-9089-40c3-abdd-15f47120d682";
    const S: &str = "b1407f18-575d-487c-bc0c-640c6da651bc";

    fn config(model_uri: &str) -> config::Config {
        let servers = format!(r#"{{"{S}": {{"uri": "http://pacs/dicom-web"}}}}"#);
        let models = format!(
            r#"{{"{M}": {{"uri": "{model_uri}", "task": "segmentation", "supports": ["/studies"],
                "dataFilter": [{{"dataKey": "a", "title": "A"}}, {{"dataKey": "b", "title": "B",
                  "dataFilter": [{{"dataKey": "c", "title": "C"}}]}}]}}}}"#
        );
        config::from_texts(std::path::Path::new("config"), &servers, &models).expect("valid config")
    }

    fn key(c: &config::Config, target: &str) -> Key {
        let Route::Inference(r) = route("GET", target).route.unwrap() else {
            panic!("not an inference")
        };
        Key::of(&crate::plan::make(c, &r, None).unwrap())
    }

    #[test]
    fn the_same_assignment_in_any_encoding_or_order_is_one_key() {
        let c = config("http://model/seg");
        let base = format!("/segmentations/{M}/studies/1.2");
        let json_list = format!(
            "{base}?data-filters=%5B%7B%22dataKey%22%3A%22a%22%2C%22uuid%22%3A%221.3%22%7D%2C%7B%22dataKey%22%3A%22b%22%2C%22uuid%22%3A%221.4%22%2C%22dataFilter%22%3A%5B%7B%22dataKey%22%3A%22c%22%2C%22uuid%22%3A%221.5%22%7D%5D%7D%5D"
        );
        // axios 0.x: one object per parameter, here in the other order.
        let axios0 = format!(
            "{base}?data-filters[]={{\"dataKey\":\"b\",\"uuid\":\"1.4\",\"dataFilter\":[{{\"uuid\":\"1.5\",\"dataKey\":\"c\"}}]}}&data-filters[]={{\"uuid\":\"1.3\",\"dataKey\":\"a\"}}&server={S}"
        );
        // axios 1.x bracket notation.
        let axios1 = format!(
            "{base}?data-filters[0][dataKey]=a&data-filters[0][uuid]=1.3&data-filters[1][dataKey]=b&data-filters[1][uuid]=1.4&data-filters[1][dataFilter][0][dataKey]=c&data-filters[1][dataFilter][0][uuid]=1.5"
        );
        let k = key(&c, &json_list);
        assert_eq!(k, key(&c, &axios0));
        assert_eq!(k, key(&c, &axios1));
        assert_eq!(k.hex().len(), 64);
        let other = format!(
            "{base}?data-filters[0][dataKey]=a&data-filters[0][uuid]=1.4&data-filters[1][dataKey]=b&data-filters[1][uuid]=1.3&data-filters[1][dataFilter][0][dataKey]=c&data-filters[1][dataFilter][0][uuid]=1.5"
        );
        assert_ne!(k, key(&c, &other), "swapped series are another question");
    }

    #[test]
    fn a_changed_model_uri_is_another_key() {
        let t = format!("/segmentations/{M}/studies/1.2?data-filters=[{{\"dataKey\":\"a\",\"uuid\":\"1.3\"}},{{\"dataKey\":\"b\",\"uuid\":\"1.4\",\"dataFilter\":[{{\"dataKey\":\"c\",\"uuid\":\"1.5\"}}]}}]");
        assert_ne!(
            key(&config("http://model/seg"), &t),
            key(&config("http://model/v2/seg"), &t)
        );
    }
}
