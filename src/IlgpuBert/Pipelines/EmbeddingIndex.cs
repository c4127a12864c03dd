// A corpus embedded once: `embed --out FILE.safetensors` and `search --index FILE` write it, a
// later search reads it instead of embedding the corpus again. It is a safetensors file (tensor
// "embeddings" [N, D], so numpy and HF's safetensors read it) whose metadata say what it is of:
// the SHA-256 of the texts (one per line, in order) and of the embedding — the model's files and
// every setting that changes a vector (pooling, Dense, normalisation, prompt, maximum length).
// A search refuses an index whose texts or embedding are not the ones it would compute.
using System.Security.Cryptography;
using System.Text;
using IlgpuBert.Checkpoints;

namespace IlgpuBert.Pipelines;

/// <summary>Sentence vectors of a corpus, with what they were computed from (<see cref="TextsHash"/>, <see cref="EmbeddingHash"/>).</summary>
public sealed class EmbeddingIndex
{
    /// <summary>The tensor holding the vectors, [N, D].</summary>
    public const string Tensor = "embeddings";

    /// <summary>The metadata value of "format" that marks an index.</summary>
    public const string Format = "ilgpu-bert-embeddings";

    /// <summary>Vectors and their provenance.</summary>
    public EmbeddingIndex(IReadOnlyList<float[]> vectors, string textsHash, string embeddingHash, string embedding)
    {
        if (vectors.Count == 0) throw new ArgumentException("an index of no texts");
        if (vectors.Any(v => v.Length != vectors[0].Length)) throw new ArgumentException("vectors of different lengths");
        Vectors = vectors;
        TextsHash = textsHash;
        EmbeddingHash = embeddingHash;
        Embedding = embedding;
    }

    /// <summary>One vector per text, in the texts' order (zeros for a blank text).</summary>
    public IReadOnlyList<float[]> Vectors { get; }

    /// <summary>SHA-256 (hex) of the texts (<see cref="HashTexts"/>).</summary>
    public string TextsHash { get; }

    /// <summary>SHA-256 (hex) of the model's files and embedding settings (<see cref="BertPipeline.EmbeddingHash"/>).</summary>
    public string EmbeddingHash { get; }

    /// <summary>The embedding in words (model folder, pooling, normalisation, prompt), for messages.</summary>
    public string Embedding { get; }

    /// <summary>SHA-256 (hex) of texts as lines: each text's UTF-8 bytes followed by a newline.</summary>
    public static string HashTexts(IEnumerable<string> texts)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var text in texts)
        {
            sha.AppendData(Encoding.UTF8.GetBytes(text));
            sha.AppendData("\n"u8);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>Writes the index as a safetensors file (atomically).</summary>
    public void Save(string path)
    {
        int d = Vectors[0].Length;
        var flat = new float[(long)Vectors.Count * d];
        for (int i = 0; i < Vectors.Count; i++) Vectors[i].CopyTo(flat, (long)i * d);
        SafeTensors.Write(path, new Dictionary<string, HostTensor> { [Tensor] = new([Vectors.Count, d], flat) }, new Dictionary<string, string>
        {
            ["format"] = Format, ["texts_sha256"] = TextsHash, ["embedding_sha256"] = EmbeddingHash, ["embedding"] = Embedding,
        });
    }

    /// <summary>Reads an index that <see cref="Save"/> wrote; anything else is refused by name.</summary>
    public static EmbeddingIndex Load(string path)
    {
        using var file = SafeTensorsFile.Open(path);
        var meta = file.Metadata;
        if (meta.GetValueOrDefault("format") != Format || !meta.ContainsKey("texts_sha256") || !meta.ContainsKey("embedding_sha256"))
            throw new CheckpointException($"{path}: not an embedding index (written by embed --out FILE.safetensors or search --index; its metadata say what it was made from)");
        if (!file.Entries.TryGetValue(Tensor, out var entry) || entry.Shape.Length != 2 || entry.Shape[0] == 0)
            throw new CheckpointException($"{path}: an embedding index needs a 2-D tensor \"{Tensor}\" with at least one row");
        var flat = file.Read(Tensor).Data;
        int n = entry.Shape[0], d = entry.Shape[1];
        var vectors = Enumerable.Range(0, n).Select(i => flat.AsSpan(i * d, d).ToArray()).ToList();
        return new EmbeddingIndex(vectors, meta["texts_sha256"], meta["embedding_sha256"], meta.GetValueOrDefault("embedding") ?? "");
    }

    /// <summary>
    /// Refuses this index for <paramref name="texts"/> embedded as <paramref name="embeddingHash"/>
    /// unless it was made from exactly those: the message says which differs.
    /// </summary>
    public void Check(string path, IReadOnlyList<string> texts, string embeddingHash, string embedding)
    {
        if (Vectors.Count != texts.Count || HashTexts(texts) != TextsHash)
            throw new ArgumentException($"{path} was made from other texts ({Vectors.Count} of them) than the corpus given ({texts.Count}); "
                + "delete it or name another --index, and it is made again");
        if (embeddingHash != EmbeddingHash)
            throw new ArgumentException($"{path} was made with another model or embedding ({Embedding}) than this one ({embedding}); "
                + "delete it or name another --index, and it is made again");
    }
}
