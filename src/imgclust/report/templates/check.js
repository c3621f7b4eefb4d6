// A thumbnail shown twice (a gallery and the outliers, say) is embedded once: the later <img> copies its source.
function imgclustCopies(){var copies=document.querySelectorAll('img[data-copy-of]');
for(var i=0;i<copies.length;i++){var first=document.getElementById(copies[i].getAttribute('data-copy-of'));
if(first){copies[i].src=first.src;}}}
// Counts the <img> elements that decoded (naturalWidth > 0) and records it on <body> for tests and tools.
function imgclustCheck(){var imgs=document.images,ok=0;for(var i=0;i<imgs.length;i++){
if(imgs[i].complete&&imgs[i].naturalWidth>0){ok++;}}
document.body.setAttribute('data-images-loaded',ok+'/'+imgs.length);
document.body.setAttribute('data-images-ok',ok===imgs.length?'true':'false');}
imgclustCopies();
window.addEventListener('load',imgclustCheck);
