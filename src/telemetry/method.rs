//! The `method` label of the call metrics. A label value is a time series kept for the life of
//! the process, so only the methods this server serves get their own; every other path (an
//! unknown service or method, a scanner's probe) is counted under one `unknown` value, so no
//! caller can grow `/metrics` and the process's memory by inventing paths.

use std::{collections::HashSet, sync::LazyLock};

use prost::Message;

/// The label of a call to a path that no served service implements.
pub const UNKNOWN_METHOD: &str = "unknown";

/// The descriptor sets of the services `startup` serves: the export service, health, and both
/// reflection versions.
const SERVED: [&[u8]; 4] = [
    crate::proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// `package.Service/Method` of every served method, read from the descriptors so that a new
/// RPC is labelled without a list to keep in step.
static KNOWN_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    SERVED
        .into_iter()
        .filter_map(|encoded| prost_types::FileDescriptorSet::decode(encoded).ok())
        .flat_map(|set| set.file)
        .flat_map(|file| {
            let package = file.package().to_owned();
            file.service.into_iter().flat_map(move |service| {
                let name = format!("{package}.{}", service.name());
                service.method.into_iter().map(move |method| format!("{name}/{}", method.name()))
            })
        })
        .collect()
});

/// The label of a call to `path` (`/package.Service/Method`): the method when it is served,
/// else [`UNKNOWN_METHOD`].
pub fn label(path: &str) -> &'static str {
    let method = path.strip_prefix('/').unwrap_or(path);
    KNOWN_METHODS.get(method).map_or(UNKNOWN_METHOD, String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_keep_their_name_and_the_rest_is_unknown() {
        for served in [
            "/streamexport.v1.ExportService/ExportChannels",
            "/streamexport.v1.ExportService/ExportUsers",
            "/streamexport.v1.ExportService/ExportUser",
            "/streamexport.v1.ExportService/GetTask",
            "/streamexport.v1.ExportService/WatchTask",
            "/streamexport.v1.ExportService/ReadExport",
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(label(served), &served[1..]);
        }
        for other in [
            "",
            "/",
            "/streamexport.v1.ExportService/Nope",
            "/streamexport.v1.ExportService/GetTask/extra",
            "/streamexport.v1.ExportService",
            "/nope.Service/GetTask",
            "/google.api.Http/Anything",
        ] {
            assert_eq!(label(other), UNKNOWN_METHOD, "{other:?}");
        }
    }
}
