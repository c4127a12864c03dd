// Reference tokenization for TokenizerTests: HF's tokenizers library configured exactly as
// transformers' BertTokenizerFast is for a vocab.txt (WordPiece, BertNormalizer, BertPreTokenizer,
// [CLS] a [SEP] b [SEP], the special tokens as added tokens, longest-first truncation).
//   node encode.js REQUEST.json OUT.json
// REQUEST: {vocab, lowercase, stripAccents, chineseChars, maxLength (0: none), inputs: [[a, b|null], ...],
//           template (true: TemplateProcessing as transformers writes today, else BertProcessing),
//           save (write the configured tokenizer as tokenizer.json there), tokenizerJson (load that
//           file instead of configuring one: what Tokenizer.from_file gives)}
// OUT: [{ids, typeIds, offsets}, ...] with offsets in code points of each input text.
const fs = require('fs');
const { Tokenizer, WordPiece, bertNormalizer, bertPreTokenizer, bertProcessing, templateProcessing } = require('tokenizers');

async function configured(req) {
  const model = await WordPiece.fromFile(req.vocab, { unkToken: '[UNK]' });
  const tokenizer = new Tokenizer(model);
  tokenizer.setNormalizer(bertNormalizer({
    cleanText: true, handleChineseChars: req.chineseChars, stripAccents: req.stripAccents, lowercase: req.lowercase,
  }));
  tokenizer.setPreTokenizer(bertPreTokenizer());
  const id = t => { const i = tokenizer.tokenToId(t); if (i === null) throw new Error('no ' + t); return i; };
  tokenizer.setPostProcessor(req.template
    ? templateProcessing('[CLS] $A [SEP]', '[CLS] $A [SEP] $B:1 [SEP]:1', [['[CLS]', id('[CLS]')], ['[SEP]', id('[SEP]')]])
    : bertProcessing(['[SEP]', id('[SEP]')], ['[CLS]', id('[CLS]')]));
  tokenizer.addSpecialTokens(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']);
  return tokenizer;
}

(async () => {
  const req = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const tokenizer = req.tokenizerJson ? Tokenizer.fromFile(req.tokenizerJson) : await configured(req);
  if (req.save) tokenizer.save(req.save, true);
  if (req.maxLength > 0) tokenizer.setTruncation(req.maxLength, { strategy: 'LongestFirst' });
  const out = [];
  const batch = 512;
  for (let i = 0; i < req.inputs.length; i += batch) {
    const chunk = req.inputs.slice(i, i + batch);
    // Single texts in batches; pairs one at a time (the binding's batch call takes no pairs).
    const encodings = chunk.every(([, b]) => b === null)
      ? await tokenizer.encodeBatch(chunk.map(([a]) => a))
      : await Promise.all(chunk.map(([a, b]) => tokenizer.encode(a, b)));
    for (const e of encodings)
      out.push({ ids: e.getIds(), typeIds: e.getTypeIds(), offsets: e.getOffsets() });
  }
  fs.writeFileSync(process.argv[3], JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
