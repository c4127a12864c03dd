// IlgpuBert from a console app: make a small BERT, embed two sentences, fine-tune a classifier on a
// handful of labelled lines, save it, load it back and classify. Everything goes into the folder
// given as the first argument (default: ./sample-run). `dotnet run -- DIR [--device cpu|cuda|opencl]`.
using IlgpuBert.FineTuning;
using IlgpuBert.Model;
using IlgpuBert.Pipelines;
using IlgpuBert.Runtime;
using IlgpuBert.Text;

string work = Path.GetFullPath(args.Length > 0 ? args[0] : "sample-run");
string deviceName = args.Length > 2 && args[1] == "--device" ? args[2] : "auto";
Directory.CreateDirectory(work);
using var device = BertDevice.Open(DeviceSpec.Parse(deviceName));
Console.WriteLine($"device: {device.Spec} ({device.Name})");

// 1. A BERT-tiny with a WordPiece vocabulary trained on the embedded corpus, saved in HF layout.
string pretrained = Path.Combine(work, "pretrained"), vocabPath = Path.Combine(work, "vocab.txt");
File.WriteAllLines(vocabPath, WordPieceTrainer.Train(DefaultCorpus.Documents().Take(500).Select(d => d.Text), 2000));
using (var bert = new BertForPreTraining(device, BertConfig.ForSize("tiny", File.ReadAllLines(vocabPath).Length)))
{
    bert.Parameters.Initialize(seed: 1);
    BertFolder.Save(bert, pretrained, vocabPath);
}

// 2. Sentence embeddings (mean pooling, L2-normalised, as for any folder without modules.json).
using (var pipeline = BertPipeline.Load(device, pretrained))
{
    var vectors = pipeline.Embed(["Gets the value of the property.", "Returns the number of elements."]);
    Console.WriteLine($"embed: {vectors.Count} vectors of {vectors[0].Length}, cosine {BertPipeline.Cosine(vectors[0], vectors[1]):F3}");
}

// 3. Fine-tune a classifier on a small TSV; the fine-tuned model is saved in its folder.
string train = Path.Combine(work, "train.tsv"), finetuned = Path.Combine(work, "classifier");
File.WriteAllLines(train, ["text\tlabel", .. Enumerable.Range(0, 8).SelectMany(i => new[]
{
    $"Gets the value of property {i}.\tproperty", $"Reads all lines of file {i}.\tfile",
})]);
var eval = new FineTuner(device, TextWriter.Null).Run(new FineTuneOptions { Model = pretrained, Train = train, Eval = train, Epochs = 3, BatchSize = 4 }, finetuned);
Console.WriteLine($"finetune: accuracy {eval["accuracy"]} on the training lines, saved to {finetuned}");

// 4. Load what was saved and classify.
using (var classifier = BertPipeline.Load(device, finetuned))
    foreach (var c in classifier.Classify(["Gets the value of property 3.", "Reads all lines of file 5."]))
        Console.WriteLine($"classify: {c.Label} ({c.Probability:F2})");
Console.WriteLine("sample: done");
