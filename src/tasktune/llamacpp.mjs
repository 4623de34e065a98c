// Greedy answers from a GGUF file in llama.cpp itself (node-llama-cpp's build), for tasktune's export parity check
// and its benchmark. Everything about the prompt comes from the file, as a llama.cpp chat would take it: the chat
// template (rendered by @huggingface/jinja, the JS port of the engine transformers uses), BOS by the file's
// add_bos_token, tokens by llama.cpp's tokenizer, and the answer ends where llama.cpp's vocabulary says a generation
// ends (its end-of-generation tokens), never at a stop id passed in from Python.
//
// node llamacpp.mjs NODE_MODULES REQUEST.json  ->  one JSON object on stdout
// REQUEST: {model, lora?, template?, threads?, batch?, conversations: [{messages, max_tokens}]}
// `template` stands for llama-server's --chat-template-file: an adapter's run may prompt other than its base file.
// answer:  {prompt_tokens, tokens, text, stopped: "eog" | "length", seconds}
import {readFileSync} from "node:fs";
import {join} from "node:path";
import {pathToFileURL} from "node:url";

const [modules, requestFile] = process.argv.slice(2);
const req = JSON.parse(readFileSync(requestFile, "utf8"));
const {getLlama, LlamaLogLevel} = await import(pathToFileURL(join(modules, "node-llama-cpp", "dist", "index.js")));
const {Template} = await import(pathToFileURL(join(modules, "@huggingface", "jinja", "dist", "index.js")));

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath: req.model});
const meta = model.fileInfo.metadata;
const source = req.template ?? meta?.tokenizer?.chat_template;
if (!source) {
    console.log(JSON.stringify({error: "the GGUF file has no tokenizer.chat_template"}));
    process.exit(0);
}
const template = new Template(source);
const batch = Math.max(1, Math.min(req.batch ?? 1, req.conversations.length));
const context = await model.createContext({
    sequences: batch,
    contextSize: Math.min(model.trainContextSize, 2048) * batch,
    threads: req.threads ?? llama.cpuMathCores,
    lora: req.lora ? {adapters: [{filePath: req.lora}]} : undefined,
});

function promptTokens(messages) {
    const text = template.render({
        messages,
        add_generation_prompt: true,
        bos_token: model.tokens.bosString ?? "",
        eos_token: model.tokens.eosString ?? "",
    });
    const tokens = model.tokenize(text, true);
    if (model.tokens.shouldPrependBosToken && model.tokens.bos !== null && tokens[0] !== model.tokens.bos)
        tokens.unshift(model.tokens.bos);
    return tokens;
}

async function answer(sequence, conversation) {
    const prompt = promptTokens(conversation.messages);
    const t0 = performance.now();
    const tokens = [];
    let stopped = "length";
    for await (const token of sequence.evaluate(prompt, {temperature: 0, yieldEogToken: true})) {
        if (model.isEogToken(token)) {
            stopped = "eog";
            break;
        }
        tokens.push(token);
        if (tokens.length >= conversation.max_tokens) break;
    }
    await sequence.clearHistory();
    const text = model.detokenize(tokens, false);
    return {prompt_tokens: prompt, tokens, text, stopped, seconds: (performance.now() - t0) / 1000};
}

const answers = new Array(req.conversations.length);
const t0 = performance.now();
let next = 0;
await Promise.all(
    Array.from({length: batch}, async () => {
        const sequence = context.getSequence();
        while (next < req.conversations.length) {
            const i = next++;
            answers[i] = await answer(sequence, req.conversations[i]);
        }
        sequence.dispose();
    }),
);
const seconds = (performance.now() - t0) / 1000;
console.log(JSON.stringify({answers, seconds}));
await context.dispose();
await model.dispose();
