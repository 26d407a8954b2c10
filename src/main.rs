//! model-proxy: between a DICOM viewer, DICOMweb PACS servers and AI model APIs.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    model_proxy::run(std::env::args().skip(1).collect())
}
