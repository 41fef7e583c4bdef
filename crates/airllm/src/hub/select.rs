//! Which files of a repo a pull fetches.

/// Weight formats airllm does not read: skipped when a repo also has safetensors.
const OTHER_WEIGHTS: &[&str] =
    &[".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".ckpt", ".mlmodel", ".npz"];

/// Choose the files to fetch from a repo's file list.
///
/// - `include` patterns (globs where `*` also crosses `/`, as `huggingface-cli
///   download --include` does): exactly the matching files.
/// - a quantization tag, or a repo whose weights are only GGUF files: the GGUF file
///   for the tag, picked as llama.cpp's `-hf org/name:TAG` does
///   ([`airllm_format::hub::pick_gguf`]: `Q4_K_M` by default, else the first).
/// - otherwise a safetensors checkpoint: the top-level files, without weights in
///   formats airllm does not read (PyTorch `.bin`, ONNX, GGUF copies, ...).
pub fn select_files(names: &[&str], include: &[String], quant: Option<&str>) -> Result<Vec<String>, String> {
    let listing = || {
        let mut shown: Vec<&str> = names.iter().take(12).copied().collect();
        if names.len() > 12 {
            shown.push("...");
        }
        shown.join(", ")
    };
    if !include.is_empty() {
        let patterns = include
            .iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| format!("--include {p:?} is not a valid pattern: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let picked: Vec<String> =
            names.iter().filter(|n| patterns.iter().any(|p| p.matches(n))).map(|n| (*n).to_owned()).collect();
        if picked.is_empty() {
            return Err(format!("no file matches --include {}; the repo has: {}", include.join(" "), listing()));
        }
        return Ok(picked);
    }
    let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    let has_safetensors = lower.iter().any(|n| n.ends_with(".safetensors"));
    let has_gguf = lower.iter().any(|n| n.ends_with(".gguf"));
    if quant.is_some() || (has_gguf && !has_safetensors) {
        return airllm_format::hub::pick_gguf(names, quant)
            .map(|v| v.into_iter().map(str::to_owned).collect())
            .map_err(|e| format!("{e} (choose one with ORG/NAME:TAG or --include)"));
    }
    if !has_safetensors {
        return Err(format!(
            "the repo has neither safetensors nor GGUF weights (airllm reads those two); it has: {}",
            listing()
        ));
    }
    Ok(names
        .iter()
        .zip(&lower)
        .filter(|(n, l)| !n.contains('/') && !n.starts_with('.') && !OTHER_WEIGHTS.iter().any(|x| l.ends_with(x)))
        .filter(|(_, l)| !l.ends_with(".gguf"))
        .map(|(n, _)| (*n).to_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_skips_other_weight_formats_and_subfolders() {
        let names = [
            ".gitattributes",
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "onnx/model.onnx",
            "original/consolidated.00.pth",
            "tokenizer.json",
            "README.md",
        ];
        let got = select_files(&names, &[], None).unwrap();
        assert_eq!(got, ["config.json", "model.safetensors", "tokenizer.json", "README.md"]);
    }

    #[test]
    fn include_patterns_cross_slashes_and_name_the_repo_files_when_empty() {
        let names = ["a/config.json", "b.json", "w.safetensors"];
        assert_eq!(select_files(&names, &["*.json".into()], None).unwrap(), ["a/config.json", "b.json"]);
        let e = select_files(&names, &["*.gguf".into()], None).unwrap_err();
        assert!(e.contains("w.safetensors"), "{e}");
        assert!(select_files(&names, &["[".into()], None).unwrap_err().contains("--include"));
    }

    #[test]
    fn gguf_repos_pick_one_file() {
        let names = ["README.md", "m.Q4_K_M.gguf", "m.Q8_0.gguf"];
        assert_eq!(select_files(&names, &[], None).unwrap(), ["m.Q4_K_M.gguf"]);
        assert_eq!(select_files(&names, &[], Some("Q8_0")).unwrap(), ["m.Q8_0.gguf"]);
        assert!(select_files(&["README.md", "x.bin"], &[], None).unwrap_err().contains("neither"));
    }
}
